"""On-disk cache of decoded images, so only the first run pays for decoding.

A cache file is ``<cache_dir>/<name>-<key>.pt`` where ``key`` hashes the resolved data root, the
relative path, size and mtime of every source file, and the decoding options; any change to the
files gives a new key (old files are left in place: delete the folder to reclaim space). The content
is a dict of plain tensors, strings and ints written with ``torch.save`` and read back with
``torch.load(..., weights_only=True)``, which never unpickles arbitrary objects. Writes are atomic
(temporary file in the same folder, fsync, ``os.replace``), so an interrupted run never leaves a
partial file under the final name.

Where: ``cache_dir`` if given; otherwise ``<root>/.qat_cache`` when the data root is writable, else
``$XDG_CACHE_HOME/qat`` (default ``~/.cache/qat``). Reads look in the same places, in that order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: val/ and test/ stored class-interleaved
CACHE_SUBDIR = ".qat_cache"


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "qat"


def cache_dirs(root: Path, cache_dir: str | os.PathLike | None) -> list[Path]:
    """Candidate cache folders, in order of preference."""
    if cache_dir is not None:
        return [Path(cache_dir).expanduser()]
    return [Path(root) / CACHE_SUBDIR, user_cache_dir()]


def fingerprint(root: Path, files: Iterable[Path], options: dict[str, Any]) -> str:
    """Hash of the resolved root, each file's relative path, size and mtime, and ``options``."""
    h = hashlib.sha256()
    h.update(f"qat-data-cache-v{CACHE_VERSION}\n{Path(root).resolve()}\n"
             f"{json.dumps(options, sort_keys=True)}\n".encode())
    for f in files:
        st = os.stat(f)
        rel = os.path.relpath(f, root)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _writable(d: Path) -> bool:
    p = d
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def cache_file_name(name: str, key: str) -> str:
    return f"{name}-{key}.pt"


def load_cache(name: str, key: str, dirs: list[Path]) -> tuple[dict | None, Path | None]:
    """The cached dict and its path, or ``(None, None)``. An unreadable cache file is skipped with a
    warning (it is then rebuilt), never trusted: loading uses ``weights_only=True``."""
    for d in dirs:
        path = d / cache_file_name(name, key)
        if not path.is_file():
            continue
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt / foreign file: ignore it and decode again
            warnings.warn(f"ignoring unreadable data cache '{path}': {type(e).__name__}: {e}", stacklevel=2)
            continue
        if not isinstance(obj, dict) or obj.get("version") != CACHE_VERSION:
            warnings.warn(f"ignoring data cache '{path}': unexpected content", stacklevel=2)
            continue
        return obj, path
    return None, None


def save_cache(obj: dict, name: str, key: str, dirs: list[Path]) -> Path | None:
    """Write ``obj`` atomically to the first writable folder of ``dirs``; ``None`` if none is."""
    obj = dict(obj, version=CACHE_VERSION)
    for d in dirs:
        if not _writable(d):
            continue
        path = d / cache_file_name(name, key)
        tmp = None
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=d)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
            log.info("data cache written to %s", path)
            return path
        except OSError as e:
            log.warning("cannot write data cache in %s (%s); trying the next location", d, e)
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
    warnings.warn(f"no writable data cache folder among {[str(d) for d in dirs]}: images will be decoded "
                  "again next run (set data.cache_dir=... to a writable folder)", stacklevel=2)
    return None
