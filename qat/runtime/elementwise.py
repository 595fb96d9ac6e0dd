"""Element-wise ops on two float32 values, with numpy broadcasting (squeeze-and-excitation multiplies
``[N, C, 1, 1]`` gates into ``[N, C, H, W]`` features).

| op | fields | computes |
| --- | --- | --- |
| ``add`` | | ``a + b`` |
| ``mul`` | | ``a * b`` |
"""

from __future__ import annotations

from qat.runtime.opbase import Op


class Add(Op):
    arity = 2

    def forward(self, a, b):
        return a + b


class Mul(Op):
    arity = 2

    def forward(self, a, b):
        return a * b


OPS = {"add": Add, "mul": Mul}
