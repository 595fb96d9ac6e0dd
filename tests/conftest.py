import pytest

from qat.config import CONFIG_DIR, ROOT, compose_config  # noqa: F401


def compose_cfg(overrides=(), output_dir=None):
    return compose_config(overrides, output_dir=output_dir)


@pytest.fixture
def cfg_factory(tmp_path):
    def make(*overrides):
        return compose_config(overrides, output_dir=tmp_path / "out")
    return make


@pytest.fixture(autouse=True)
def _one_thread_for_small_tensors(request):
    """Export and runtime tests work on small tensors: one intra-op thread is faster there, and
    immune to a shared machine's load."""
    if request.node.path.parent.name not in ("export", "runtime"):
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
