import errno
import json
import os

import pytest

from qat.utils import io as qio


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "m.json"
    qio.atomic_write_json(p, {"a": 1.0})
    qio.atomic_write_json(p, {"b": 2.0})
    assert json.loads(p.read_text()) == {"b": 2.0}
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]  # no temporary left behind


def test_full_disk_keeps_the_earlier_file_and_says_so(tmp_path, monkeypatch):
    p = tmp_path / "metrics.json"
    qio.atomic_write_json(p, {"test/acc": 0.5})

    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(qio.os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device.*metrics.json.*kept"):
        qio.atomic_write_json(p, {"test/acc": 0.9})
    monkeypatch.setattr(qio.os, "fsync", real_fsync)
    assert json.loads(p.read_text()) == {"test/acc": 0.5}
    assert [f.name for f in tmp_path.iterdir()] == ["metrics.json"]


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    p = tmp_path / "new.json"

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(qio.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        qio.atomic_write_text(p, "x" * 1000)
    assert list(tmp_path.iterdir()) == []
