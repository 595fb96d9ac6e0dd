"""Corrupted, truncated, tampered or foreign artifacts are rejected with a clear error; loading and
running never unpickle."""

import hashlib
import json
import pickle

import pytest
import torch

from qat.export import export_model
from qat.runtime import FormatError, IntegrityError, load
from qat.runtime.artifact import MANIFEST, SUMS, TENSORS, format_sums
from tests.export.models import NORM, SHAPE, deployed, inputs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    m, r = deployed("resnet20", "bnn")
    return export_model(m, tmp_path_factory.mktemp("exp") / "export", input_shape=SHAPE,
                        normalization=NORM, recipe=r, onnx=False).folder


@pytest.fixture
def copy(exported, tmp_path):
    dst = tmp_path / "export"
    dst.mkdir()
    for f in exported.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _resum(folder):
    """Rewrite SHA256SUMS after an edit (a tamperer who knows the format)."""
    names = [line.split()[1] for line in (folder / SUMS).read_text().splitlines()]
    sums = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}
    (folder / SUMS).write_text(format_sums(sums))


def _edit_manifest(folder, fn, resum=True):
    m = json.loads((folder / MANIFEST).read_text())
    fn(m)
    (folder / MANIFEST).write_text(json.dumps(m))
    if resum:
        _resum(folder)


def test_intact_export_loads(copy):
    assert load(copy)(inputs(2)).shape == (2, 10)


def test_flipped_byte_is_rejected(copy):
    blob = bytearray((copy / TENSORS).read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (copy / TENSORS).write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="tensors.safetensors does not match its SHA-256"):
        load(copy)


def test_truncated_file_is_rejected(copy):
    blob = (copy / TENSORS).read_bytes()
    (copy / TENSORS).write_bytes(blob[: len(blob) - 100])
    with pytest.raises(IntegrityError, match="corrupted, truncated or was modified"):
        load(copy)


def test_edited_manifest_is_rejected(copy):
    _edit_manifest(copy, lambda m: m["ops"][1].update(eps=0.5), resum=False)
    with pytest.raises(IntegrityError, match="manifest.json does not match"):
        load(copy)


def test_swapped_tensor_file_is_rejected_even_with_new_sums(copy, tmp_path):
    m, r = deployed("resnet20", "bnn", seed=5)
    other = export_model(m, tmp_path / "other", input_shape=SHAPE, normalization=NORM, recipe=r, onnx=False)
    (copy / TENSORS).write_bytes((other.folder / TENSORS).read_bytes())
    _resum(copy)
    with pytest.raises(IntegrityError, match="recorded in manifest.json"):
        load(copy)


def test_missing_files_are_named(copy):
    (copy / SUMS).unlink()
    with pytest.raises(FormatError, match="SHA256SUMS is missing"):
        load(copy)
    with pytest.raises(FormatError, match="does not exist"):
        load(copy / "nowhere")


def test_newer_format_version_is_refused(copy):
    _edit_manifest(copy, lambda m: m.update(format_version=2))
    with pytest.raises(FormatError, match="version 2 is newer than this runtime supports"):
        load(copy)


def test_not_a_manifest(copy):
    (copy / MANIFEST).write_text("{not json")
    _resum(copy)
    with pytest.raises(FormatError, match="not valid JSON"):
        load(copy)
    (copy / MANIFEST).write_text('{"format": "onnx"}')
    _resum(copy)
    with pytest.raises(FormatError, match="not a qat export manifest"):
        load(copy)


def test_malformed_ops_are_named(copy):
    _edit_manifest(copy, lambda m: m["ops"][0].update(op="conv3d"))
    with pytest.raises(FormatError, match="unknown type 'conv3d'"):
        load(copy)


def test_wrong_weight_shape_is_named(copy):
    def shrink(m):
        m["ops"][0]["out_channels"] += 1
    _edit_manifest(copy, shrink)
    with pytest.raises(FormatError, match="weight shape .* does not match the layer"):
        load(copy)


def test_reading_an_undefined_value_is_named(copy):
    def reorder(m):
        m["ops"][0], m["ops"][1] = m["ops"][1], m["ops"][0]
    _edit_manifest(copy, reorder)
    with pytest.raises(FormatError, match="before it is computed"):
        load(copy)


def test_sums_listing_a_path_outside_the_folder(copy):
    (copy / SUMS).write_text((copy / SUMS).read_text() + "0" * 64 + "  ../secret\n")
    with pytest.raises(IntegrityError, match="not a file of the folder"):
        load(copy)


def test_loading_and_running_never_unpickle(copy, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    program = load(copy)
    assert program(inputs(2)).shape == (2, 10)
    for f in copy.iterdir():  # no file is a pickle (protocol 2+ starts with 0x80)
        assert not f.read_bytes().startswith(b"\x80"), f
