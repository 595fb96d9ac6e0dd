"""data=shards: LitData shards written by scripts/make_shards.py, streamed, trained on, exported, verified."""

import json
import subprocess
import sys

import pytest
import torch

from qat.config import ROOT
from qat.data import DataRootError
from qat.data.shards import ShardsDataModule
from qat.experiment import train
from tests.conftest import compose_cfg
from tests.data.test_streaming import RUN, write_jpeg_folder

pytest.importorskip("litdata")


def test_shards_need_their_folder_and_the_normalisation(tmp_path):
    with pytest.raises(DataRootError, match="make_shards.py"):
        ShardsDataModule(tmp_path, image_size=32, mean=[0.5] * 3, std=[0.2] * 3).setup()
    with pytest.raises(ValueError, match="crop_scale"):
        ShardsDataModule(tmp_path, image_size=32, mean=[0.5] * 3, std=[0.2] * 3, crop_scale=[0.9, 0.1])
    with pytest.raises(ValueError, match="image_size"):
        ShardsDataModule(tmp_path, image_size=None, mean=[0.5] * 3, std=[0.2] * 3)


@pytest.mark.slow  # LitData's optimize starts worker processes: minutes on 2 loaded cores
def test_make_shards_then_train_export_and_verify(tmp_path):
    folder = write_jpeg_folder(tmp_path / "jpegs")
    shards = tmp_path / "shards"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_shards.py"), str(folder), str(shards),
                           "--chunk-bytes", "2MB"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((shards / "classes.json").read_text())
    assert meta["classes"] == ["class0", "class1", "class2", "class3"] and meta["counts"]["train"] == 160
    dm = ShardsDataModule(shards, image_size=32, mean=[0.5] * 3, std=[0.25] * 3, batch_size=16)
    dm.setup()
    labels = torch.cat([y for _, y in dm.train_dataloader()])
    assert sorted(labels.tolist()) == sorted([c for c in range(4) for _ in range(40)])
    assert torch.cat([y for _, y in dm.test_dataloader()])[:4].tolist() == [0, 1, 2, 3]  # interleaved order kept
    res = train(compose_cfg([*[o for o in RUN if o != "data=imagefolder"], "data=shards", f"data.root={shards}",
                             "data.num_workers=0", "quant=bnn", "trainer.max_epochs=1"], output_dir=tmp_path / "out"))
    assert res.metrics["export/agreement"] == 1.0
