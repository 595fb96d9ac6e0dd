"""train.py from the command line, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

from qat.config import ROOT

RECIPES = ["fp32", "bnn", "bwn", "twn", "admm_ternary", "qat_uint8", "linear", "log", "tanh", "int"]


def cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_run_dir_and_metrics(tmp_path):
    out = tmp_path / "OUT"
    proc = cli("data=synthetic", "model=mlp", "trainer.max_epochs=2", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.5 and metrics["test/loss"] > 0
    assert (out / ".hydra" / "config.yaml").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_every_recipe_trains_from_the_command_line(tmp_path):
    sweep = tmp_path / "sweep"
    # two small batches each: the point is that every recipe runs from the command line (the ten runs
    # are the suite's longest test; with the debug trainer's 5 batches of 128 they took 437 s at load 4)
    proc = cli("-m", f"quant={','.join(RECIPES)}", "data=synthetic", "model=resnet20", "trainer=debug",
               "trainer.limit_train_batches=2", "data.batch_size=32",
               "logger=csv", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = set()
    for run_dir in sorted(p for p in sweep.iterdir() if p.is_dir()):
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
        quant = next(r for r in RECIPES if f"quant={r}\n" in overrides + "\n")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["test/loss"] == metrics["test/loss"]  # not NaN
        seen.add(quant)
    assert seen == set(RECIPES)


def test_wrong_option_lists_choices_and_writes_nothing(tmp_path):
    out = tmp_path / "OUT"
    proc = cli("model=resnet99", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "resnet20" in proc.stderr and "vgg_small" in proc.stderr
    assert not out.exists()


def test_missing_data_root_names_the_path(tmp_path):
    out = tmp_path / "OUT"
    missing = tmp_path / "no_cifar_here"
    proc = cli("data=cifar10", f"data.root={missing}", "data.download=false", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode != 0
    assert str(missing) in proc.stderr
    assert not (out / "metrics.json").exists() and not (out / "checkpoints").exists()
    assert not (out / "tensorboard").exists()
