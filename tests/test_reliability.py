"""Exact resume after a crash, non-finite losses, bad checkpoints: nothing lost, clear errors."""

import json
import subprocess
import sys

import pytest
import torch

from qat.config import ROOT
from qat.experiment import resolve_ckpt_path, train
from tests.conftest import compose_cfg

TINY = ["data=synthetic", "data.n_train=192", "data.batch_size=32", "model=resnet20", "model.width=4",
        "trainer.max_epochs=3", "trainer.deterministic=true", "logger=csv", "seed=7",
        "callbacks.progress_bar.refresh_rate=0"]


def cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("quant", ["qat_uint8", "admm_ternary"])
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, quant):
    # 6 steps per epoch: killed after step 9, in the middle of the second epoch.
    extra = [f"quant={quant}"] + (["quant.update_every=2"] if quant == "admm_ternary" else [])
    ref, crash = tmp_path / "ref", tmp_path / "crash"
    proc = cli(*TINY, *extra, f"hydra.run.dir={ref}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = cli(*TINY, *extra, f"hydra.run.dir={crash}", "+callbacks.kill._target_=tests.helpers.KillAtStep",
               "+callbacks.kill.step=9", cwd=ROOT)
    assert proc.returncode == -9  # SIGKILL
    assert not (crash / "metrics.json").exists()
    assert (crash / "checkpoints" / "last.ckpt").is_file()
    proc = cli(*TINY, *extra, f"hydra.run.dir={crash}", "resume=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((ref / "metrics.json").read_text())
    b = json.loads((crash / "metrics.json").read_text())
    for key in ("test/acc", "test/loss", "val/acc_best"):
        assert a[key] == b[key], (key, a[key], b[key])


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "out"
    proc = cli(*TINY, "quant=fp32", f"hydra.run.dir={out}", "+callbacks.nan._target_=tests.helpers.NaNAtStep",
               "+callbacks.nan.step=8", cwd=ROOT)
    assert proc.returncode != 0
    assert "at step 8" in proc.stderr and "NonFiniteLossError" in proc.stderr
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not (out / "metrics.json").exists()


def test_resume_without_a_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="hydra.run.dir"):
        train(compose_cfg([*TINY, "resume=true"], output_dir=tmp_path / "fresh"))


def test_checkpoint_with_another_class_count_is_refused(tmp_path):
    first = compose_cfg([*TINY, "trainer.max_epochs=1", "data.num_classes=4"], output_dir=tmp_path / "a")
    train(first)
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    other = compose_cfg([*TINY, "data.num_classes=5", f"ckpt_path={ckpt}"], output_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="num_classes=4.*num_classes=5"):
        train(other)


def test_a_pickled_object_in_a_checkpoint_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('pwned')" % str(tmp_path / "pwned"),))

    first = compose_cfg([*TINY, "trainer.max_epochs=1"], output_dir=tmp_path / "a")
    train(first)
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    state["evil"] = Evil()
    torch.save(state, ckpt)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        train(compose_cfg([*TINY, f"ckpt_path={ckpt}"], output_dir=tmp_path / "b"))
    assert not (tmp_path / "pwned").exists()


def test_resume_auto_starts_fresh_then_resumes(tmp_path):
    cfg = compose_cfg(["resume=auto"], output_dir=tmp_path)
    assert resolve_ckpt_path(cfg) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_ckpt_path(cfg) == tmp_path / "checkpoints" / "last.ckpt"
