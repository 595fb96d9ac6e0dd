"""Hydra callback for Optuna sweeps: create the SQLite database's folder before the sweeper opens it.

The sweeper opens its storage before the launcher creates ``hydra.sweep.dir``, and SQLite creates a
database file but not the folders above it. Configured in ``configs/hparams_search/optuna.yaml``
(``hydra.callbacks``); storage URLs other than ``sqlite:///PATH`` are left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SQLITE = "sqlite:///"


def sqlite_path(url: Any) -> Path | None:
    """The file of a ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` URL, else None."""
    if not isinstance(url, str) or not url.startswith(SQLITE):
        return None
    path = url[len(SQLITE):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


class SqliteStorageDir(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        path = sqlite_path(config.hydra.sweeper.get("storage"))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
