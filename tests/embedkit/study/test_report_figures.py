"""The study report's figures say what they show: random weights stamped on every PNG, chance marked, the heatmap
on an absolute AUROC scale, the direction of paired differences on the axis."""
from __future__ import annotations

import matplotlib
import pytest

from embedkit.study import report as figs

matplotlib.use("Agg")


def _row(ds, res, bb, arm, kind, auroc, *, random=True):
    return {"dataset": ds, "resolution": res, "backbone": bb, "arm": arm, "kind": kind, "auroc": auroc,
            "auroc_ci_low": auroc - 0.05, "auroc_ci_high": min(auroc + 0.05, 1.0), "random_weights": random,
            "label": "macro_avg", "evaluation_type": "internal", "label_fraction": 1.0, "seed": 0}


ROWS = [_row(ds, r, "vit", arm, kind, a) for ds in ("a", "b") for r in (32, 64)
        for arm, kind, a in (("linear", "frozen", 0.71), ("ft", "finetune", 0.74 if r == 64 else 0.69))]


@pytest.fixture
def closed(monkeypatch):
    """The figures each function closes (matplotlib's ``plt.close`` records them before closing)."""
    import matplotlib.pyplot as plt

    seen = []
    real = plt.close

    def close(fig=None):
        seen.append(fig)
        real(fig)

    monkeypatch.setattr(plt, "close", close)
    return seen


def _texts(fig) -> str:
    parts = [t.get_text() for t in fig.texts]
    if fig._suptitle is not None:
        parts.append(fig._suptitle.get_text())
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        leg = ax.get_legend()
        if leg is not None:
            parts += [t.get_text() for t in leg.get_texts()]
    return " | ".join(parts)


@pytest.mark.parametrize("name", ["resolution", "heatmap", "frozen_vs_finetune", "paired"])
def test_every_figure_of_random_weights_says_so(tmp_path, closed, name):
    if name == "paired":
        diffs = [{"comparison": "a @32: vit ft vs linear", "delta": -0.02, "ci_low": -0.1, "ci_high": 0.05,
                  "p": 0.4, "p_adj": 0.4, "n_boot": 200}]
        assert figs.fig_paired(tmp_path / "p.png", diffs, "holm", random=["vit"])
    else:
        assert getattr(figs, f"fig_{name}")(tmp_path / f"{name}.png", ROWS)
    text = _texts(closed[-1])
    assert "RANDOM WEIGHTS (vit)" in text, text
    if name == "paired":
        assert "A − B" in text  # which way a negative difference points
    if name in ("resolution", "frozen_vs_finetune"):
        assert "chance (0.5)" in text
    if name == "resolution":
        assert "vit/ft (finetuned)" in text and "vit/linear (frozen head)" in text


def test_pretrained_figures_carry_no_random_notice(tmp_path, closed):
    rows = [dict(r, random_weights=False) for r in ROWS]
    assert figs.fig_resolution(tmp_path / "r.png", rows)
    assert "RANDOM" not in _texts(closed[-1])


def test_heatmap_colour_scale_is_absolute_not_stretched(tmp_path, closed):
    """0.69 .. 0.74 must not span the whole colour map (a 0.05 gap drawn as purple vs yellow)."""
    assert figs.fig_heatmap(tmp_path / "h.png", ROWS)
    images = [im for ax in closed[-1].axes for im in ax.images]
    assert images and all(im.get_clim() == (0.5, 1.0) for im in images)
    low = [dict(r, auroc=0.3) for r in ROWS[:1]] + ROWS[1:]
    assert figs.fig_heatmap(tmp_path / "h2.png", low)
    assert all(im.get_clim() == (0.3, 1.0) for ax in closed[-1].axes for im in ax.images)
