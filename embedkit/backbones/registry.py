"""The registry of named backbones (timm-style: one registered spec per short name).

Arrows point one way: this module imports the zoo (the study's specs, plain data) and registers it on import;
the zoo and :mod:`embedkit.backbones.spec` import nothing back. Importing it is cheap (no torch): the CLI lists
the registry without loading any model library.
"""
from __future__ import annotations

import difflib
from typing import Callable

from embedkit.backbones.spec import BackboneSpec
from embedkit.backbones.zoo import ZOO
from embedkit.errors import ModelError

__all__ = ["register_backbone", "list_backbones", "get_spec", "find_spec", "get_factory", "unknown_model_message"]

# A factory builds a Backbone for a spec: factory(spec, location, *, device, precision, features) -> Backbone.
Factory = Callable[..., object]

_REGISTRY: dict[str, BackboneSpec] = {}
_FACTORIES: dict[str, Factory] = {}


def register_backbone(spec: BackboneSpec) -> Callable[[Factory], Factory]:
    """Register ``spec`` under ``spec.name``; optionally decorate a custom factory for it.

    Parameters
    ----------
    spec : BackboneSpec
        The spec; its name must not be registered yet.

    Returns
    -------
    callable
        A decorator. Applied to ``factory(spec, location, *, device, precision, features) -> Backbone`` it makes
        ``load_backbone(spec.name)`` use that factory instead of the spec's family loader.

    Raises
    ------
    ModelError
        The name is taken.

    Examples
    --------
    >>> from embedkit.backbones.spec import HALF_MEAN, HALF_STD
    >>> register_backbone(BackboneSpec(name="my-vit", source="timm", hub_id="vit_small_patch16_224.augreg_in21k",
    ...     embed_dim=384, patch_size=16, num_registers=0, mean=HALF_MEAN, std=HALF_STD, license="apache-2.0"))
    ... # doctest: +SKIP
    """
    if spec.name in _REGISTRY:
        raise ModelError(f"Backbone {spec.name!r} is already registered; pick another name.")
    _REGISTRY[spec.name] = spec

    def decorate(factory: Factory) -> Factory:
        _FACTORIES[spec.name] = factory
        return factory

    return decorate


def list_backbones() -> list[BackboneSpec]:
    """All registered specs, in registration order."""
    return list(_REGISTRY.values())


def get_spec(name: str) -> BackboneSpec:
    """The registered spec called ``name``.

    Raises
    ------
    ModelError
        Unknown name; the message suggests close matches.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise ModelError(unknown_model_message(name))


def find_spec(name: str) -> BackboneSpec | None:
    """The registered spec whose name or hub id is ``name`` (None if there is none)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for spec in _REGISTRY.values():
        if spec.hub_id is not None and name in (spec.hub_id, spec.weights_repo):
            return spec
    return None


def get_factory(name: str) -> Factory | None:
    """A custom factory registered for ``name`` (None means the spec's family loader)."""
    return _FACTORIES.get(name)


def unknown_model_message(name: str) -> str:
    """``Unknown model 'x'. Did you mean 'y'? Run 'embedkit models' to list all.``"""
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
    hint = ""
    if len(close) == 1:
        hint = f" Did you mean {close[0]!r}?"
    elif close:
        hint = " Did you mean " + ", ".join(repr(c) for c in close[:-1]) + f" or {close[-1]!r}?"
    return (f"Unknown model {name!r}.{hint} Run 'embedkit models' to list all "
            "(or pass a hub id, 'timm:NAME', a directory or a checkpoint file).")


for _spec in ZOO:
    register_backbone(_spec)
