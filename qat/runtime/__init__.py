"""The reference integer runtime: load an export folder and run it without the model's Python class.

    from qat.runtime import load
    program = load("OUT/export")            # verifies checksums, format version, every tensor
    logits = program(program.preprocess(images_uint8))

Binary layers run by XNOR-popcount on packed words, ternary layers by signed sums, integer-affine
layers by int32 accumulation and fixed-point requantization; floating point only where the manifest
keeps a value in float (see ``docs/export-format.md``). ``python -m qat.runtime EXPORT_DIR data=...``
evaluates an export on a data set's test split.
"""

from qat.runtime.artifact import FORMAT, FORMAT_VERSION, load_artifact
from qat.runtime.errors import FormatError, IntegrityError
from qat.runtime.program import Program, load, normalize

__all__ = ["FORMAT", "FORMAT_VERSION", "FormatError", "IntegrityError", "Program", "load",
           "load_artifact", "normalize"]
