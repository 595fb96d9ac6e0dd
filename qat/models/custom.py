"""A user's own model factory as a qat model (``model=custom model.factory=package.module:function``).

qat knows three facts about the data: ``num_classes``, ``in_channels`` and ``image_size``. A factory
gets those of them that it accepts as keyword arguments (all three when it takes ``**kwargs``), plus
the config's ``kwargs``; it returns an ``nn.Module`` mapping ``[N, C, H, W]`` images to ``[N, classes]``
logits.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from torch import nn

DATA_FACTS = ("num_classes", "in_channels", "image_size")


def resolve(spec: str) -> Callable[..., Any]:
    """``package.module:function`` (or ``package.module.function``) -> the callable."""
    spec = str(spec)
    module_name, sep, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not sep or not module_name or not attr:
        raise ValueError(f"model.factory must look like package.module:function, got '{spec}'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"model.factory '{spec}': cannot import {module_name} ({err}); is its folder on "
                          f"PYTHONPATH (or installed)?") from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"model.factory '{spec}': {module_name} has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"model.factory '{spec}' is not callable")
    return obj


def accepted(fn: Callable[..., Any], facts: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``facts`` that ``fn`` accepts as keyword arguments."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: give it everything
        return dict(facts)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(facts)
    names = {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                  inspect.Parameter.KEYWORD_ONLY)}
    return {k: v for k, v in facts.items() if k in names}


def custom_model(factory: str | Callable[..., nn.Module], num_classes: int, in_channels: int = 3,
                 image_size=None, kwargs: dict | None = None) -> nn.Module:
    """Call the user's ``factory`` with the data facts it accepts and ``kwargs``."""
    fn = resolve(factory) if isinstance(factory, str) else factory
    facts = {"num_classes": num_classes, "in_channels": in_channels,
             "image_size": tuple(image_size) if image_size is not None else None}
    extra = dict(kwargs or {})
    clash = sorted(set(extra) & set(DATA_FACTS))
    if clash:
        raise ValueError(f"model.kwargs sets {', '.join(clash)}, which come from the data; remove them")
    model = fn(**accepted(fn, facts), **extra)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model.factory {factory} returned {type(model).__name__}, not an nn.Module")
    return model
