"""Reading an export folder safely: checksums first, then plain parsers (JSON, safetensors).

An export folder holds ``manifest.json`` (structure), ``tensors.safetensors`` (every array) and
``SHA256SUMS`` (``sha256sum -c`` format, over every other file). Loading checks, in order: that the
files exist, that each file listed in ``SHA256SUMS`` matches, the manifest's format name and version,
and the tensor file's SHA-256 and size recorded inside the manifest (each op then checks the
dtype and shape of every tensor it reads).
Nothing is unpickled: JSON and safetensors are data-only formats.

Checksums catch corruption, truncation and accidental edits; they are not a signature (whoever can
edit the files can also rewrite the sums).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from qat.runtime.errors import FormatError, IntegrityError

FORMAT = "qat-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
SUMS = "SHA256SUMS"



def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_sums(text: str, where: str) -> dict[str, str]:
    sums = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64 or any(c not in "0123456789abcdef" for c in parts[0]):
            raise IntegrityError(f"{where}: line {i} is not '<sha256>  <file>': {line[:80]!r}")
        sums[parts[1].lstrip("*").strip()] = parts[0]
    return sums


def format_sums(sums: dict[str, str]) -> str:
    return "".join(f"{h}  {name}\n" for name, h in sorted(sums.items()))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path} is missing; an export folder holds {MANIFEST}, {TENSORS} and "
                          f"{SUMS} (re-export with `python -m qat.export CKPT OUT_DIR`)") from None


def read_verified(folder: str | Path) -> tuple[dict, dict[str, bytes]]:
    """``(sums, {file: bytes})`` for the manifest and tensor files, every listed file verified."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FormatError(f"export folder {folder} does not exist or is not a folder")
    sums = parse_sums(_read(folder / SUMS).decode("utf-8", errors="replace"), str(folder / SUMS))
    for required in (MANIFEST, TENSORS):
        if required not in sums:
            raise IntegrityError(f"{folder / SUMS} does not list {required}; the folder is incomplete "
                                 "or was edited")
    data = {}
    for name, want in sums.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise IntegrityError(f"{folder / SUMS} lists '{name}', which is not a file of the folder")
        blob = _read(folder / name)
        got = sha256_bytes(blob)
        if got != want:
            raise IntegrityError(f"{folder / name} does not match its SHA-256 in {SUMS} (expected "
                                 f"{want[:16]}..., got {got[:16]}...): the file is corrupted, truncated "
                                 "or was modified; re-export it")
        if name in (MANIFEST, TENSORS):
            data[name] = blob
    return sums, data


def parse_manifest(blob: bytes, where: str) -> dict:
    try:
        manifest = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(f"{where} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FormatError(f"{where} is not a qat export manifest (format must be '{FORMAT}')")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise FormatError(f"{where}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise FormatError(f"{where}: export format version {version} is newer than this runtime "
                          f"supports ({FORMAT_VERSION}); upgrade qat")
    if version < 1:
        raise FormatError(f"{where}: invalid format_version {version}")
    for key in ("input", "output", "ops", "values", "files"):
        if key not in manifest:
            raise FormatError(f"{where}: required key '{key}' is missing")
    return manifest


def parse_tensors(blob: bytes, manifest: dict, where: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load as st_load  # a plain header + raw buffers parser

    rec = manifest["files"].get(TENSORS, {})
    if rec.get("sha256") != sha256_bytes(blob) or rec.get("bytes") != len(blob):
        raise IntegrityError(f"{where} does not match the SHA-256 / size recorded in {MANIFEST}: the "
                             "tensor file and the manifest come from different exports, or one was edited")
    try:
        tensors = st_load(blob)
    except Exception as err:  # safetensors raises its own error types on malformed headers
        raise FormatError(f"{where} is not a valid safetensors file: {err}") from None
    return tensors


def load_artifact(folder: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(manifest, tensors)`` of a verified export folder."""
    folder = Path(folder)
    _, data = read_verified(folder)
    manifest = parse_manifest(data[MANIFEST], str(folder / MANIFEST))
    tensors = parse_tensors(data[TENSORS], manifest, str(folder / TENSORS))
    return manifest, tensors
