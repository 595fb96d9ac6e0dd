"""Training leaves a verified export; python -m qat.export / qat.runtime work from files alone."""

import json
import os

import pytest
import torch

from qat.experiment import train
from qat.export import ExportError, load_checkpoint
from qat.export.__main__ import main as export_main
from qat.runtime import load
from qat.runtime.__main__ import main as runtime_main
from qat.runtime.native import load_library
from tests.conftest import compose_cfg

FAST = ["model=mlp", "model.hidden=32", "data=synthetic", "data.n_train=128", "data.n_val=64", "data.n_test=96",
        "data.batch_size=32", "data.eval_batch_size=32", "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
        "logger=csv", "callbacks.progress_bar.refresh_rate=0", "+trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    out = {}
    for quant in ("bnn", "qat_uint8", "fp32"):
        d = tmp_path_factory.mktemp(quant)
        train(compose_cfg([f"quant={quant}", *FAST], output_dir=d))
        out[quant] = d
    return out


def metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_bnn_run_leaves_a_verified_export(runs):
    m = metrics(runs["bnn"])
    assert m["export/agreement"] == 1.0
    assert m["export/acc"] == pytest.approx(m["test/acc"], abs=1e-6)
    assert m["export/size_bytes"] > 0 and m["export/compression"] > 5
    folder = runs["bnn"] / "export"
    assert {"manifest.json", "tensors.safetensors", "SHA256SUMS", "summary.md", "verification.json"} <= {
        p.name for p in folder.iterdir()}
    assert "binary MACs" in (folder / "summary.md").read_text()
    assert load(folder).manifest["recipe"]["name"] == "bnn"
    # verification ran on the runtime load() picks: the native kernels wherever they are built
    runtime = json.loads((folder / "verification.json").read_text())["runtime"]
    backend = runtime["backend"]
    assert (backend, runtime["isa"]) == (load(folder).backend, load(folder).isa)
    assert backend.startswith("native") == (load_library() is not None and not os.environ.get("QAT_RUNTIME"))


def test_uint8_run_exports_onnx_and_bounds_disagreements(runs):
    m = metrics(runs["qat_uint8"])
    for key in ("export/agreement", "export/onnx_agreement", "export/acc", "export/onnx_acc"):
        assert 0.9 <= m[key] <= 1.0 if "agreement" in key else 0.0 <= m[key] <= 1.0
    report = json.loads((runs["qat_uint8"] / "export" / "verification.json").read_text())
    for which in ("runtime", "onnx"):
        r = report[which]
        # a top-1 can only change where the model's top-2 margin is within the logit difference
        for ex in r["examples"]:
            assert ex["model_margin"] <= 2 * r["max_abs_logit_diff"]
    assert (runs["qat_uint8"] / "export" / "model.onnx").is_file()
    # the reference is the model's exact-accumulation evaluation; the float32 one is reported too
    assert 0.9 <= report["runtime"]["agreement_float32"] <= 1.0
    assert m["export/agreement_float32"] == report["runtime"]["agreement_float32"]


def test_cli_onnx_form_qdq(runs, tmp_path, capsys):
    import onnx

    ckpt = runs["qat_uint8"] / "checkpoints" / "last.ckpt"
    forms = {}
    for form in ("exact", "qdq"):
        out = tmp_path / form
        assert export_main([str(ckpt), str(out), "--onnx-form", form, "--verify"]) == 0
        forms[form] = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
        assert "onnx: agreement" in capsys.readouterr().out
    assert "DequantizeLinear" in forms["qdq"] and "DequantizeLinear" not in forms["exact"]
    assert {"ConvInteger", "MatMulInteger"} & forms["exact"]
    with pytest.raises(SystemExit):
        export_main([str(ckpt), str(tmp_path / "bad"), "--onnx-form", "qlinear"])


def test_export_callback_rejects_an_unknown_onnx_form(tmp_path):
    from qat.export.callback import ExportCallback

    with pytest.raises(ValueError, match="onnx_form must be 'exact' or 'qdq'"):
        ExportCallback(str(tmp_path), onnx_form="QDQ")


def test_fp32_run_exports_nothing(runs):
    assert not (runs["fp32"] / "export").exists()
    assert not any(k.startswith("export/") for k in metrics(runs["fp32"]))


def test_cli_export_and_runtime_from_a_checkpoint(runs, tmp_path, capsys):
    ckpt = runs["bnn"] / "checkpoints" / "last.ckpt"
    out = tmp_path / "exp"
    assert export_main([str(ckpt), str(out), "--verify", "--ternary-packing", "trits"]) == 0
    printed = capsys.readouterr().out
    assert "runtime: agreement 1.0000" in printed
    assert runtime_main([str(out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the stored (synthetic) data config is rebuilt from the export alone; last.ckpt is the tested one
    assert res["n"] == 96
    assert res["acc"] == pytest.approx(metrics(runs["bnn"])["export/acc"], abs=1e-9)
    assert load(out).manifest["recipe"]["name"] == load_checkpoint(ckpt).recipe.name == "bnn"


def test_cli_refuses_fp32_and_pickles(runs, tmp_path, capsys):
    ckpt = runs["fp32"] / "checkpoints" / "last.ckpt"
    assert export_main([str(ckpt), str(tmp_path / "x")]) == 2
    assert "quant=fp32" in capsys.readouterr().err
    bad = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "qat_meta": {"config": {}, "data": {}}, "obj": ExportError("x")}, bad)
    with pytest.raises(ExportError, match="weights-only"):
        load_checkpoint(bad)
    assert export_main([str(tmp_path / "missing.ckpt"), str(tmp_path / "y")]) == 2


def test_failed_export_is_recorded_not_raised(tmp_path, caplog):
    from types import SimpleNamespace

    from qat.data.augment import BatchPreprocess
    from qat.export.callback import ExportCallback
    from tests.export.models import NORM, deployed

    model, recipe = deployed("mlp", "bnn")
    model.append(torch.nn.GELU())  # not an op the exporter knows
    dm = SimpleNamespace(preprocess=BatchPreprocess(NORM["mean"], NORM["std"]), mean=NORM["mean"],
                         std=NORM["std"], in_channels=3, image_size=(8, 8))
    cb = ExportCallback(str(tmp_path / "export"))
    cb.on_test_end(SimpleNamespace(is_global_zero=True, datamodule=dm),
                   SimpleNamespace(recipe=recipe, model=model, meta={}))
    assert cb.extra_metrics == {"export/failed": 1.0}
    assert "GELU is not supported by the exporter" in caplog.text
    assert not (tmp_path / "export").exists()


def test_cli_normalisation_needs_no_data_for_cifar10(tmp_path):
    from types import SimpleNamespace

    from qat.data.augment import CIFAR10_MEAN, CIFAR10_STD
    from qat.export.__main__ import normalization

    cfg = {"_target_": "qat.data.CIFAR10DataModule", "root": str(tmp_path / "absent"), "download": False,
           "mean": None, "std": None}
    restored = SimpleNamespace(data={}, config={"data": cfg})
    assert normalization(restored, []) == {"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}
    assert normalization(restored, ["data.mean=[0.5,0.5,0.5]", "data.std=[0.2,0.2,0.2]"]) == {
        "mean": [0.5] * 3, "std": [0.2] * 3}
    stored = SimpleNamespace(data={"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}, config={"data": cfg})
    assert normalization(stored, [])["mean"] == [0.1, 0.2, 0.3]
