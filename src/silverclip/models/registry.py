"""Model registry: ``@register_model`` factories, ``create_model(name, **kw)`` and ``list_models()``.

A model built by :func:`create_model` carries ``model.model_config == {"name": name, **kw}``, a
JSON-able dict that rebuilds the same architecture with ``create_model(**model.model_config)``;
checkpoints store it (``silverclip.checkpoint``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(fn: F | None = None, *, name: str | None = None) -> Any:
    """Register a factory under its function name (or ``name``). Usable as ``@register_model`` or
    ``@register_model(name="...")``. Registering a name twice is an error (it would hide a model)."""

    def deco(f: F) -> F:
        key = name or f.__name__
        if key in _MODELS and _MODELS[key] is not f:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = f
        return f

    return deco(fn) if fn is not None else deco


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _import_builtin()
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``model.model_config`` records ``{"name": name, **kwargs}``."""
    _import_builtin()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODELS))}")
    model = _MODELS[name](**kwargs)
    model.model_config = {"name": name, **copy.deepcopy(kwargs)}
    return model


def _import_builtin() -> None:
    # The built-in model modules register themselves on import; importing them here (not at module
    # import) keeps ``registry`` free of import cycles.
    from silverclip.models import clip, resnet3d, text  # noqa: F401
