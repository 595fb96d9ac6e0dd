"""Distillation from a teacher checkpoint: the loss, the teacher kept out of the student, resume."""

import pytest
import torch
import torch.nn.functional as F

from qat.distill import Distillation
from qat.experiment import train
from tests.conftest import compose_cfg

TINY = ["data=synthetic", "data.n_train=192", "data.batch_size=32", "model=resnet20", "model.width=4",
        "trainer.deterministic=true", "logger=csv", "seed=7", "callbacks.progress_bar.refresh_rate=0",
        "scheduler=constant", "+trainer.enable_model_summary=false"]


def test_loss_is_hintons_mix_of_cross_entropy_and_softened_kl():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    d = Distillation(alpha=0.7, temperature=3.0)
    total, ce, kd = d.loss(s, t, y)
    p_t = F.softmax(t / 3, dim=1)
    manual_kd = (p_t * (p_t.log() - F.log_softmax(s / 3, dim=1))).sum(1).mean() * 9
    assert torch.allclose(kd, manual_kd, atol=1e-6)
    assert torch.allclose(ce, F.cross_entropy(s, y))
    assert torch.allclose(total, 0.3 * ce + 0.7 * manual_kd, atol=1e-6)
    assert float(Distillation(alpha=1.0).loss(t, t, y)[0]) == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(Distillation(alpha=0.0).loss(s, t, y)[0], F.cross_entropy(s, y))


@pytest.mark.parametrize("kw, error, message", [
    (dict(alpha=1.5), ValueError, "distill.alpha"),
    (dict(temperature=0), ValueError, "distill.temperature"),
    (dict(teacher="/nonexistent/teacher.ckpt"), FileNotFoundError, "distill.teacher"),
])
def test_bad_values_fail_at_construction(kw, error, message):
    with pytest.raises(error, match=message):
        Distillation(**kw)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train(compose_cfg([*TINY, "quant=fp32", "trainer.max_epochs=1", "test=false"], output_dir=out))
    return out / "checkpoints" / "last.ckpt"


def state_keys(path):
    return set(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])


def test_bnn_student_trains_exports_exactly_and_keeps_the_teacher_out(teacher, tmp_path):
    plain = train(compose_cfg([*TINY, "quant=bnn", "trainer.max_epochs=1"], output_dir=tmp_path / "plain"))
    kd = train(compose_cfg([*TINY, "quant=bnn", "trainer.max_epochs=1", f"distill.teacher={teacher}"],
                           output_dir=tmp_path / "kd"))
    m = kd.metrics
    assert m["distill/teacher_ms"] > 0 and m["train/kd"] > 0
    assert m["export/agreement"] == 1.0
    assert m["train/loss_epoch"] != plain.metrics["train/loss_epoch"]  # the teacher changed the loss
    # Same tensors as a run without a teacher: none of the teacher's weights is stored.
    assert state_keys(tmp_path / "kd" / "checkpoints" / "last.ckpt") == \
        state_keys(tmp_path / "plain" / "checkpoints" / "last.ckpt")
    teacher_module = kd.module.distill.teacher
    assert not teacher_module.training and not any(p.requires_grad for p in teacher_module.parameters())


def test_resume_reloads_the_teacher_and_matches_an_uninterrupted_run(teacher, tmp_path):
    kd = [f"distill.teacher={teacher}", "test=false"]
    full = train(compose_cfg([*TINY, "quant=bwn", "trainer.max_epochs=2", *kd], output_dir=tmp_path / "full"))
    train(compose_cfg([*TINY, "quant=bwn", "trainer.max_epochs=1", *kd], output_dir=tmp_path / "part"))
    # Resumed without naming the teacher: it comes back from the path in the checkpoint.
    resumed = train(compose_cfg([*TINY, "quant=bwn", "trainer.max_epochs=2", "test=false",
                                 f"ckpt_path={tmp_path / 'part' / 'checkpoints' / 'last.ckpt'}"],
                                output_dir=tmp_path / "resumed"))
    assert resumed.module.distill is not None
    for key in ("val/acc", "val/loss", "train/kd", "train/loss_epoch"):
        assert resumed.metrics[key] == full.metrics[key], key
