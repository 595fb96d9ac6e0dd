import pytest

from qat.config import CONFIG_DIR, ROOT, compose_config  # noqa: F401


def compose_cfg(overrides=(), output_dir=None):
    return compose_config(overrides, output_dir=output_dir)


@pytest.fixture
def cfg_factory(tmp_path):
    def make(*overrides):
        return compose_config(overrides, output_dir=tmp_path / "out")
    return make
