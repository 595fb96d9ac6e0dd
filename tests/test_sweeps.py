"""Sweeps as users run them: a 2-recipe sweep on parallel local workers and its report, an Optuna study
that resumes after its process was killed, and the sweep and launcher configs."""

import csv
import json
import sqlite3
import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from matplotlib.image import imread

from qat.callbacks.sweep import SqliteStorageDir, sqlite_path
from qat.config import CONFIG_DIR, ROOT

TINY = ["data=synthetic", "data.n_train=128", "data.n_val=64", "data.n_test=64", "model=mlp", "model.hidden=32",
        "trainer.max_epochs=1", "logger=csv"]


def cli(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def sweep_report(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep_report.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def compose_hydra(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("train", overrides=overrides, return_hydra_config=True)


def default_callbacks_without_export():
    """The export callback (another part of the project) is not under test here."""
    cfg = compose_hydra([])
    return ["~callbacks.export"] if "export" in cfg.callbacks else []


def test_two_recipe_sweep_on_joblib_workers_and_its_report(tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli("-m", "hydra/launcher=joblib_local", "quant=fp32,bnn", *TINY, "callbacks.progress_bar.refresh_rate=0",
               *default_callbacks_without_export(),
               f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    metrics = {}
    for run in ("0", "1"):
        quant = next(o for o in (sweep / run / ".hydra" / "overrides.yaml").read_text().split() if "quant=" in o)
        metrics[quant.split("=")[1]] = json.loads((sweep / run / "metrics.json").read_text())

    rep = sweep_report(sweep)
    assert rep.returncode == 0, rep.stderr
    md = (sweep / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert len(rows) == 2
    order = ["fp32" if "quant=fp32" in r else "bnn" for r in rows]
    best = [metrics[q]["val/acc_best"] for q in order]
    assert best == sorted(best, reverse=True)  # sorted by the optimized metric, best first
    assert "sorted by `val/acc_best`" in md

    with open(sweep / "report.csv") as f:
        table = {r["quant"]: r for r in csv.DictReader(f)}
    assert set(table) == {"fp32", "bnn"} and {r["status"] for r in table.values()} == {"ok"}
    for q in ("fp32", "bnn"):
        assert float(table[q]["val/acc_best"]) == metrics[q]["val/acc_best"]
    params = metrics["fp32"]["model/params"]
    assert metrics["fp32"]["model/size_bytes"] == 4 * params  # float32 everywhere
    assert metrics["bnn"]["model/size_bytes"] < metrics["fp32"]["model/size_bytes"] / 8  # 1-bit weights

    img = imread(sweep / "report.png")
    assert img.shape[0] > 300 and img.shape[1] > 500 and img.std() > 0


def write_run(path, overrides, metrics=None):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))


def test_report_sorts_lists_failures_and_prefers_the_exported_size(tmp_path):
    write_run(tmp_path / "0", ["quant=fp32"], {"val/acc_best": 0.9, "test/acc": 0.88, "test/loss": 0.3,
                                               "model/size_bytes": 4000.0, "model/params": 1000.0})
    write_run(tmp_path / "1", ["quant=bnn"], {"val/acc_best": 0.7, "test/acc": 0.69, "test/loss": 0.9,
                                              "model/size_bytes": 300.0, "export/size_bytes": 420.0,
                                              "model/params": 1000.0})
    write_run(tmp_path / "2", ["quant=bwn"])  # crashed: no metrics.json
    write_run(tmp_path / "10", ["quant=twn"], {"val/acc_best": 0.8, "test/acc": 0.79, "test/loss": 0.5,
                                               "model/size_bytes": 350.0, "model/params": 1000.0})
    rep = sweep_report(tmp_path)
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split("|")[3].strip() for r in rows] == ["quant=fp32", "quant=twn", "quant=bnn", "quant=bwn"]
    assert "| 420 |" in rows[2]  # export/size_bytes wins over model/size_bytes
    assert "failed" in rows[3]
    with open(tmp_path / "report.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok", "ok", "ok", "failed"]

    rep = sweep_report(tmp_path, "--metric", "test/loss")  # a loss: lowest first
    assert rep.returncode == 0 and "minimize" in rep.stdout
    rows = [line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| 1 ")]
    assert "quant=fp32" in rows[0]


def test_report_of_an_empty_folder_fails_clearly(tmp_path):
    rep = sweep_report(tmp_path)
    assert rep.returncode == 1 and "no runs under" in rep.stderr


def trial_states(db):
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return [s for (s,) in con.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.OperationalError:  # not created yet, or locked by the sweeper
        return None


def test_optuna_study_resumes_after_the_sweeper_is_killed(tmp_path):
    sweep = tmp_path / "study"
    db = sweep / "optuna.db"
    args = [sys.executable, str(ROOT / "train.py"), "hparams_search=bnn_optuna", *TINY, "callbacks=none",
            f"hydra.sweep.dir={sweep}", "hydra.sweeper.study_name=resume_test"]
    first = subprocess.Popen([*args, "hydra.sweeper.n_trials=3"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while (trial_states(db) or []).count("COMPLETE") < 2:
            assert first.poll() is None, f"the sweep ended early: {first.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no 2 finished trials in 300 s"
            time.sleep(0.1)
        first.kill()  # no clean shutdown: the third trial is cut off mid-training
    finally:
        first.kill()
        first.wait()
    states = trial_states(db)
    assert states.count("COMPLETE") == 2 and len(states) <= 3

    proc = cli("hparams_search=bnn_optuna", *TINY, "callbacks=none", f"hydra.sweep.dir={sweep}",
               "hydra.sweeper.study_name=resume_test", "hydra.sweeper.n_trials=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT study_name FROM studies").fetchall() == [("resume_test",)]
        done = con.execute("SELECT number FROM trials WHERE state = 'COMPLETE' ORDER BY number").fetchall()
    # The same study went on: the two finished trials kept, one new trial after them (not trial 0 of a
    # fresh study); a trial that was cut off stays RUNNING in the database and the sampler ignores it.
    assert [n for (n,) in done][:2] == [0, 1] and len(done) == 3 and done[2][0] >= 2
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in results and "quant.latent_clip" in results
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 3  # each invocation's runs in their own sub-folders, none overwritten


def test_hparams_search_configs():
    for name, recipe_keys in {"optuna": [], "bnn_optuna": ["quant.latent_clip"],
                              "admm_ternary_optuna": ["quant.rho", "quant.rho_growth", "quant.update_every"],
                              "qat_uint8_optuna": ["quant.ema_decay", "quant.freeze_bn"]}.items():
        cfg = compose_hydra([f"hparams_search={name}"])
        sweeper = cfg.hydra.sweeper
        assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler._target_.endswith("TPESampler")
        assert sweeper.direction == "maximize" and cfg.optimized_metric == "val/acc_best"
        assert sweeper.study_name.startswith(f"{name}-")
        assert sweeper.storage == f"sqlite:///multirun/optuna/{sweeper.study_name}/optuna.db"
        assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", *recipe_keys}
        assert cfg.hydra.mode.name == "MULTIRUN"
        recipe = name.removesuffix("_optuna")
        if recipe != "optuna":
            assert cfg.hydra.runtime.choices.quant == recipe


def test_launcher_configs():
    joblib = compose_hydra(["hydra/launcher=joblib_local"]).hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == 2
    slurm = compose_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition == "gpu" and slurm.tasks_per_node == 1


def test_sqlite_storage_folder_is_created(tmp_path):
    assert sqlite_path("sqlite:///rel/dir/x.db").as_posix() == "rel/dir/x.db"
    assert sqlite_path(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"
    assert sqlite_path("postgresql://u:p@host/db") is None and sqlite_path(None) is None
    from omegaconf import OmegaConf

    target = tmp_path / "deep" / "er" / "optuna.db"
    SqliteStorageDir().on_multirun_start(OmegaConf.create({"hydra": {"sweeper": {"storage": f"sqlite:///{target}"}}}))
    assert target.parent.is_dir()
