"""Every Python example in docs/python-api.md runs as written (the docs and this test cannot drift)."""

import re

import pytest

from qat.config import ROOT

DOC = ROOT / "docs" / "python-api.md"
BLOCKS = re.findall(r"^## (.+?)\n.*?```python\n(.*?)```", DOC.read_text(), flags=re.S | re.M)


def test_the_doc_has_the_three_examples():
    titles = [t for t, _ in BLOCKS]
    assert titles == ["A plain PyTorch loop", "Your own LightningModule",
                      "torchvision's MobileNetV2, from prepare to a verified export"], titles


@pytest.mark.parametrize("title, code", BLOCKS, ids=[t for t, _ in BLOCKS])
def test_docs_example_runs(title, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write to out/...
    exec(compile(code, f"{DOC}:{title}", "exec"), {"__name__": "__docs__"})  # noqa: S102 - our own docs
    assert any((tmp_path / "out").iterdir())
