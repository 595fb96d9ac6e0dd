"""scripts/gpu_check.sh --dry-run passes on a CPU (what CI can check of the GPU check)."""

import json
import subprocess

from qat.config import ROOT


def test_gpu_check_dry_run_passes_and_writes_the_summary(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["ok"] and s["dry_run"]
    # the GPU tests were collected (not run): kernels, export agreement, DDP
    assert "tests collected" in s["gpu_tests"]["summary"] and int(s["gpu_tests"]["summary"].split()[0]) >= 10
    assert [r["recipe"] for r in s["runs"]] == ["fp32", "bnn", "qat_uint8"]
    for r in s["runs"]:
        assert r["step_ms"] > 0 and 0.0 <= r["test_acc"] <= 1.0 and r["device"] == "cpu"
    assert [r["export_agreement"] for r in s["runs"][1:]] == [1.0, s["runs"][2]["export_agreement"]]
    assert s["runs"][2]["export_agreement"] >= 0.99
