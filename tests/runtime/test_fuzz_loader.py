"""Fuzzing the export loader: random and mutated files. Only the documented ``FormatError`` (with
its subclass ``IntegrityError``) may escape ``qat.runtime.load``; nothing hangs (hypothesis deadline)."""

import hashlib
import shutil
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qat.export import export_model
from qat.runtime import FormatError, load
from qat.runtime.artifact import MANIFEST, SUMS, TENSORS, format_sums
from tests.export.models import NORM, SHAPE, deployed

FUZZ = settings(max_examples=40, deadline=timedelta(seconds=10), derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    m, r = deployed("mlp", "bnn")
    return export_model(m, tmp_path_factory.mktemp("exp") / "export", input_shape=SHAPE,
                        normalization=NORM, recipe=r, onnx=False).folder


def _fresh(exported, tmp_path, tag):
    dst = tmp_path / f"e{tag}"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(exported, dst)
    return dst


def _resum(folder):
    names = [line.split()[1] for line in (folder / SUMS).read_text().splitlines()]
    (folder / SUMS).write_text(format_sums({n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
                                            for n in names}))


def _load_only_format_errors(folder):
    try:
        load(folder)
    except FormatError:
        pass


@FUZZ
@given(name=st.sampled_from([MANIFEST, TENSORS, SUMS]), data=st.binary(max_size=4096), resum=st.booleans())
def test_random_file_contents(exported, tmp_path, name, data, resum):
    folder = _fresh(exported, tmp_path, "r")
    (folder / name).write_bytes(data)
    if resum and name != SUMS:
        _resum(folder)  # get past the checksums, into the parsers
    _load_only_format_errors(folder)


@FUZZ
@given(name=st.sampled_from([MANIFEST, TENSORS]),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_mutated_files_with_valid_checksums(exported, tmp_path, name, edits, cut):
    folder = _fresh(exported, tmp_path, "m")
    raw = bytearray((folder / name).read_bytes())
    for pos, byte in edits:
        raw[int(pos * len(raw))] = byte
    if cut is not None:
        raw = raw[: int(cut * len(raw))]
    (folder / name).write_bytes(bytes(raw))
    _resum(folder)
    _load_only_format_errors(folder)
