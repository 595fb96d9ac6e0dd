"""Write an export folder: plain files only, with checksums, replaced as a whole.

The folder is assembled in a temporary sibling and renamed into place, so a reader never sees a
half-written export and files of an earlier export (e.g. a stale ``model.onnx``) never linger.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from qat.runtime.artifact import (FORMAT, FORMAT_VERSION, MANIFEST, SUMS, TENSORS, format_sums,
                                  sha256_bytes)


def safetensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})


def core_files(manifest: dict, tensors: dict[str, np.ndarray]) -> dict[str, bytes]:
    """``manifest.json`` and ``tensors.safetensors`` bytes; fills ``manifest['files']`` (the tensor
    file's SHA-256 and size; its own header lists each tensor's dtype and shape)."""
    blob = safetensors_bytes(tensors)
    manifest["files"] = {TENSORS: {"sha256": sha256_bytes(blob), "bytes": len(blob)}}
    # compact: the manifest counts in the export's size (pretty-print with `python -m json.tool`)
    text = json.dumps(manifest, separators=(",", ":"), allow_nan=False) + "\n"
    return {TENSORS: blob, MANIFEST: text.encode()}


def write_folder(out_dir: str | Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` and their ``SHA256SUMS`` as the folder ``out_dir`` (replacing it whole)."""
    out_dir = Path(out_dir)
    files = dict(files)
    files[SUMS] = format_sums({name: sha256_bytes(data) for name, data in files.items()}).encode()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)  # names may hold subfolders
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.rmdir(old)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
