"""Recipes by name: ``qat.recipe("bnn", stochastic=True)`` is ``qat.BNN(stochastic=True)``.

The names are those of ``configs/quant/`` (``quant=NAME``); the options are the class's keyword
arguments, which validate themselves at construction.
"""

from __future__ import annotations

import inspect

from qat.quant.affine import QATUint8
from qat.quant.binary import BNN, BWN
from qat.quant.fixed_point import LinearFixedPoint, LogFixedPoint, MinMaxInt, TanhFixedPoint
from qat.quant.recipe import FP32, Recipe
from qat.quant.ternary import TWN, ADMMTernary
from qat.quant.torch_ao import TorchAOQAT

RECIPES: dict[str, type[Recipe]] = {cls.name: cls for cls in (
    FP32, BNN, BWN, TWN, ADMMTernary, QATUint8, TorchAOQAT, LinearFixedPoint, LogFixedPoint, TanhFixedPoint,
    MinMaxInt)}


def options(cls: type[Recipe]) -> list[str]:
    """The keyword arguments a recipe class takes (its own and those of the classes it extends)."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        names += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def recipe(name: str, **opts) -> Recipe:
    """The recipe called ``name`` with ``opts``; an unknown name or option is an error listing the choices."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe '{name}'; choose one of: {', '.join(RECIPES)}")
    cls = RECIPES[name]
    unknown = sorted(set(opts) - set(options(cls)))
    if unknown:
        raise TypeError(f"recipe '{name}' has no option {', '.join(unknown)}; its options are: "
                        f"{', '.join(options(cls)) or 'none'}")
    return cls(**opts)
