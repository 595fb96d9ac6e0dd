"""What the diagnostics cost: ResNet-20 BNN, batch 128, 32x32 images, on this machine's CPU.

Two measurements, rounds with and without the callback interleaved so that load from other processes
hits both alike:

- per log: the callback's own timer (``diagnostics/seconds`` over the number of logs: collecting every
  tag, histograms, writing the events) against the step time without it, at the default interval of
  100 steps: overhead = t_log / (100 * t_step);
- end to end: step time with the callback logging every 10 steps (10x the default, so that the cost
  stands out of the noise) against step time without it; divided by 10 for the default interval.

Both must be at most 3 %. Slow (minutes): ``python -m pytest -m slow -s tests/callbacks``.
"""

import statistics

import hydra
import pytest
import pytorch_lightning as pl

from qat.callbacks.diagnostics import QuantDiagnostics
from qat.callbacks.timing import StepTimer
from qat.experiment import build_module
from tests.conftest import compose_cfg

DEFAULT_EVERY = 100
EVERY = 10
STEPS, WARMUP, ROUNDS, BATCH = 24, 3, 3, 128


def one_round(cfg, dm, out, diagnostics: bool):
    timer = StepTimer(WARMUP)
    diag = QuantDiagnostics(every_n_steps=EVERY)
    logger = pl.loggers.TensorBoardLogger(save_dir=str(out), name="", version="")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=STEPS + WARMUP, limit_val_batches=0,
                         callbacks=[timer, diag] if diagnostics else [timer], logger=logger, log_every_n_steps=50,
                         enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                         num_sanity_val_steps=0)
    trainer.fit(build_module(cfg, dm), datamodule=dm)
    logs = 1 + (STEPS + WARMUP) // EVERY  # the baseline at step 0, then every EVERY steps
    return timer.seconds_per_step(), (diag.seconds / logs if diagnostics else None)


@pytest.mark.slow
def test_diagnostics_overhead_at_most_3_percent(tmp_path):
    cfg = compose_cfg(["quant=bnn", "model=resnet20", "data=synthetic", "data.num_classes=10", "data.image_size=32",
                       f"data.n_train={BATCH * (STEPS + WARMUP)}", f"data.batch_size={BATCH}"], output_dir=tmp_path)
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    without, with_, per_log = [], [], []
    for r in range(ROUNDS):
        for diagnostics in ((False, True) if r % 2 == 0 else (True, False)):
            step, log_cost = one_round(cfg, dm, tmp_path / f"r{r}_{diagnostics}", diagnostics)
            (with_ if diagnostics else without).append(step)
            if log_cost is not None:
                per_log.append(log_cost)
    t_step, t_with, t_log = statistics.median(without), statistics.median(with_), statistics.median(per_log)
    per_log_overhead = t_log / (DEFAULT_EVERY * t_step)
    end_to_end = (t_with / t_step - 1) * EVERY / DEFAULT_EVERY
    print(f"\nResNet-20 BNN, batch {BATCH}: {t_step * 1e3:.0f} ms/step without diagnostics "
          f"(rounds: {', '.join(f'{t * 1e3:.0f}' for t in without)}), {t_with * 1e3:.0f} ms/step logging every "
          f"{EVERY} steps (rounds: {', '.join(f'{t * 1e3:.0f}' for t in with_)}); one log {t_log * 1e3:.0f} ms.\n"
          f"Overhead at every {DEFAULT_EVERY} steps: {100 * per_log_overhead:.2f} % (per-log timer), "
          f"{100 * end_to_end:.2f} % (end to end, from every {EVERY} steps)")
    assert per_log_overhead <= 0.03
    assert end_to_end <= 0.03
