"""Feature views: names, dimensions, exact definitions, and how to compute them from one forward pass.

View names (``--features``):

ViT family
    ``cls``, ``mean_tokens``, ``mean_patch``, ``mean_registers``, ``cls_layers_last{K}`` (e.g. ``cls_layers_last4``),
    ``cls_layer_{I}`` (block index, negative from the end: ``cls_layer_-2``), ``patch_grid_{G}x{G}``.
ConvNeXt family
    ``pooled``, ``stage{S}_pooled`` (``stage1_pooled`` ... ``stage4_pooled``), ``patch_grid_{G}x{G}``.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from embedkit.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch

VIT_VIEW_PATTERNS = ("cls", "mean_tokens", "mean_patch", "mean_registers", "cls_layers_last{K}", "cls_layer_{I}",
                     "patch_grid_{G}x{G}")
CONVNEXT_VIEW_PATTERNS = ("pooled", "stage{S}_pooled", "patch_grid_{G}x{G}")

_LAYERS_LAST = re.compile(r"^cls_layers_last(\d+)$")
_LAYER = re.compile(r"^cls_layer_(-?\d+)$")
_GRID = re.compile(r"^patch_grid_(\d+)x(\d+)$")
_STAGE = re.compile(r"^stage(\d+)_pooled$")
_MAX_GRID = 64


@dataclass(frozen=True)
class ViewPlan:
    """The views one backbone computes, and what the forward pass must capture for them.

    Attributes
    ----------
    dims : dict[str, int]
        View name -> feature dimension, in request order.
    definitions : dict[str, str]
        View name -> exact text definition (goes into provenance).
    blocks : tuple[int, ...]
        ViT block indices (0-based) whose CLS token must be captured.
    stages : tuple[int, ...]
        ConvNeXt stage indices (0-based) whose globally pooled map must be captured.
    """

    dims: dict[str, int]
    definitions: dict[str, str]
    blocks: tuple[int, ...] = field(default=())
    stages: tuple[int, ...] = field(default=())
    view_blocks: dict[str, tuple[int, ...]] = field(default_factory=dict)


def _bad_view(name: str, family: str, patterns: Sequence[str], why: str = "") -> ModelError:
    plain = [p for p in patterns if "{" not in p]
    close = difflib.get_close_matches(name, plain + ["cls_layers_last4", "patch_grid_4x4", "stage4_pooled"], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    why = f" ({why})" if why else ""
    return ModelError(f"Unknown feature view {name!r} for a {family} backbone{why}.{hint} "
                      f"Valid views: {', '.join(patterns)}.")


def _grid(name: str, family: str, patterns: Sequence[str]) -> int | None:
    m = _GRID.match(name)
    if not m:
        return None
    g, g2 = int(m.group(1)), int(m.group(2))
    if g != g2 or not 1 <= g <= _MAX_GRID:
        raise _bad_view(name, family, patterns, f"the grid must be square, GxG with 1 <= G <= {_MAX_GRID}")
    return g


def plan_vit_views(names: Sequence[str], *, dim: int, depth: int, num_registers: int) -> ViewPlan:
    """Validate ViT view names and describe them.

    Parameters
    ----------
    names : sequence of str
        Requested views (duplicates are dropped, order kept).
    dim, depth, num_registers : int
        Hidden size D, number of blocks L, register tokens R.

    Raises
    ------
    ModelError
        A name that is not a ViT view, or that this backbone cannot provide (e.g. registers when R == 0).
    """
    dims: dict[str, int] = {}
    defs: dict[str, str] = {}
    blocks: set[int] = set()
    view_blocks: dict[str, tuple[int, ...]] = {}
    first_patch = 1 + num_registers
    for name in dict.fromkeys(names):
        if name == "cls":
            dims[name], defs[name] = dim, ("last_hidden_state[:, 0]: the CLS token after the final LayerNorm "
                                           "(== HF pooler_output)")
        elif name == "mean_tokens":
            dims[name], defs[name] = dim, (f"last_hidden_state.mean(1): mean over ALL output tokens (CLS + "
                                           f"{num_registers} registers + patches) after the final LayerNorm; "
                                           "the reference study's pooling")
        elif name == "mean_patch":
            dims[name], defs[name] = dim, (f"last_hidden_state[:, {first_patch}:].mean(1): mean of the patch "
                                           "tokens only, after the final LayerNorm")
        elif name == "mean_registers":
            if num_registers == 0:
                raise _bad_view(name, "vit", VIT_VIEW_PATTERNS, "this backbone has no register tokens")
            dims[name], defs[name] = dim, (f"last_hidden_state[:, 1:{first_patch}].mean(1): mean of the "
                                           f"{num_registers} register tokens after the final LayerNorm")
        elif (m := _LAYERS_LAST.match(name)) is not None:
            k = int(m.group(1))
            if not 1 <= k <= depth:
                raise _bad_view(name, "vit", VIT_VIEW_PATTERNS, f"K must be in 1..{depth}")
            idx = list(range(depth - k, depth))
            blocks.update(idx)
            view_blocks[name] = tuple(idx)
            dims[name], defs[name] = k * dim, (
                f"concat over blocks {idx[0]}..{idx[-1]} (0-based, of {depth}; oldest first) of "
                f"final_norm(block_output)[:, 0]: the CLS token of each of the last {k} blocks, each normed with "
                f"the model's final LayerNorm (DINOv2/v3 get_intermediate_layers(n={k}, norm=True)); {k}*D dims")
        elif (m := _LAYER.match(name)) is not None:
            i = int(m.group(1))
            j = i + depth if i < 0 else i
            if not 0 <= j < depth:
                raise _bad_view(name, "vit", VIT_VIEW_PATTERNS, f"the block index must be in -{depth}..{depth - 1}")
            blocks.add(j)
            view_blocks[name] = (j,)
            dims[name], defs[name] = dim, (f"final_norm(output of block {j})[:, 0] (0-based, of {depth}): the "
                                           "CLS token of that block after the model's final LayerNorm")
        elif (g := _grid(name, "vit", VIT_VIEW_PATTERNS)) is not None:
            dims[name], defs[name] = g * g * dim, (
                f"patch tokens last_hidden_state[:, {first_patch}:] (after the final LayerNorm) laid out as a "
                f"(D, H/p, W/p) map, torch adaptive_avg_pool2d to {g}x{g}, flattened cell-major: cells in "
                f"row-major order, D features each ({g * g}*D dims)")
        else:
            raise _bad_view(name, "vit", VIT_VIEW_PATTERNS)
    return ViewPlan(dims, defs, tuple(sorted(blocks)), view_blocks=view_blocks)


def plan_convnext_views(names: Sequence[str], *, stage_dims: Sequence[int], pooled: str) -> ViewPlan:
    """Validate ConvNeXt view names and describe them.

    Parameters
    ----------
    names : sequence of str
        Requested views.
    stage_dims : sequence of int
        Channels of each stage's output map (the last one is the embedding width D).
    pooled : str
        How this implementation defines ``pooled`` (differs in wording between libraries, not in math).
    """
    dims: dict[str, int] = {}
    defs: dict[str, str] = {}
    stages: set[int] = set()
    n = len(stage_dims)
    for name in dict.fromkeys(names):
        if name == "pooled":
            dims[name], defs[name] = stage_dims[-1], pooled
        elif (m := _STAGE.match(name)) is not None:
            s = int(m.group(1))
            if not 1 <= s <= n:
                raise _bad_view(name, "convnext", CONVNEXT_VIEW_PATTERNS, f"stages are numbered 1..{n}")
            stages.add(s - 1)
            dims[name], defs[name] = stage_dims[s - 1], (
                f"mean over H and W of stage {s}'s output map (before any final norm); {stage_dims[s - 1]} dims")
        elif (g := _grid(name, "convnext", CONVNEXT_VIEW_PATTERNS)) is not None:
            stages.add(n - 1)
            dims[name], defs[name] = g * g * stage_dims[-1], (
                f"the last stage's output map (before the final norm), torch adaptive_avg_pool2d to {g}x{g}, "
                f"flattened cell-major: cells in row-major order, C features each ({g * g}*C dims)")
        else:
            raise _bad_view(name, "convnext", CONVNEXT_VIEW_PATTERNS)
    return ViewPlan(dims, defs, stages=tuple(sorted(stages)))


def grid_pool(fmap: "torch.Tensor", g: int) -> "torch.Tensor":
    """(B, C, H, W) -> (B, g*g*C), cell-major (cells row-major, then channels)."""
    import torch.nn.functional as F

    pooled = F.adaptive_avg_pool2d(fmap.float(), g)  # (B, C, g, g)
    return pooled.permute(0, 2, 3, 1).reshape(fmap.shape[0], -1)


def compute_vit_views(plan: ViewPlan, tokens: "torch.Tensor", *, num_registers: int, grid_hw: tuple[int, int],
                      block_cls: dict[int, "torch.Tensor"], final_norm) -> dict[str, "torch.Tensor"]:
    """Compute every planned ViT view.

    Parameters
    ----------
    plan : ViewPlan
        From :func:`plan_vit_views`.
    tokens : Tensor (B, 1 + R + h*w, D)
        Output tokens after the final norm.
    num_registers : int
        R.
    grid_hw : (int, int)
        Patch grid (h, w).
    block_cls : dict[int, Tensor (B, D)]
        CLS token of the captured blocks, before the final norm.
    final_norm : callable
        The model's final norm, applied to captured CLS tokens.

    Returns
    -------
    dict[str, Tensor (B, D_view)]
        float32.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    first_patch = 1 + num_registers
    h, w = grid_hw
    normed_cls = {i: final_norm(c).float() for i, c in block_cls.items()}
    for name in plan.dims:
        if name == "cls":
            out[name] = tokens[:, 0].float()
        elif name == "mean_tokens":
            out[name] = tokens.float().mean(1)
        elif name == "mean_patch":
            out[name] = tokens[:, first_patch:].float().mean(1)
        elif name == "mean_registers":
            out[name] = tokens[:, 1:first_patch].float().mean(1)
        elif name in plan.view_blocks:
            out[name] = torch.cat([normed_cls[i] for i in plan.view_blocks[name]], dim=1)
        else:
            g = int(_GRID.match(name).group(1))
            b, _, d = tokens.shape
            fmap = tokens[:, first_patch:].float().reshape(b, h, w, d).permute(0, 3, 1, 2)
            out[name] = grid_pool(fmap, g)
    return out


def compute_convnext_views(plan: ViewPlan, pooled: "torch.Tensor", stage_means: dict[int, "torch.Tensor"],
                           last_map: "torch.Tensor | None") -> dict[str, "torch.Tensor"]:
    """Compute every planned ConvNeXt view.

    Parameters
    ----------
    plan : ViewPlan
        From :func:`plan_convnext_views`.
    pooled : Tensor (B, D)
        The model's pooled output.
    stage_means : dict[int, Tensor (B, C_s)]
        Global average of each captured stage map (0-based stage index).
    last_map : Tensor (B, D, h, w) or None
        The last stage's map, needed by ``patch_grid_GxG`` only.

    Returns
    -------
    dict[str, Tensor (B, D_view)]
        float32.
    """
    out = {}
    for name in plan.dims:
        if name == "pooled":
            out[name] = pooled.float()
        elif (m := _STAGE.match(name)) is not None:
            out[name] = stage_means[int(m.group(1)) - 1].float()
        else:
            out[name] = grid_pool(last_map, int(_GRID.match(name).group(1)))
    return out
