"""Every path of the kernel library as a test parameter, skipped with the reason where this CPU or
build lacks it (so that a run on an AVX2-only machine says why the AVX-512 cases did not run)."""

import pytest

from qat.runtime.native import library as L


def _param(isa):
    have = L.available_isas()
    why = ("the native kernel library is not built" if not have else
           f"this CPU lacks {L.ISA_NAMES[isa]} (available here: {', '.join(have)})")
    return pytest.param(isa, marks=pytest.mark.skipif(isa not in have, reason=why), id=isa)


ALL_ISAS = [_param(i) for i in L.ISAS]
