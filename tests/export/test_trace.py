"""The tracer: one canonical op for every spelling, trace-time shapes, errors that name the layer."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qat.export.errors import ExportError
from qat.export.trace import trace


def ops_of(forward, *modules) -> list[tuple[str, dict]]:
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.mods = nn.ModuleList(modules)

        def forward(self, x):
            return forward(self, x)

    nodes, _, _ = trace(M().eval(), torch.randn(2, 4, 6, 6))
    return [(n.op, {k: v for k, v in n.attrs.items() if k != "module"}) for n in nodes]


@pytest.mark.parametrize("forward", [
    lambda s, x: torch.flatten(F.adaptive_avg_pool2d(x, 1), 1),
    lambda s, x: s.mods[0](x).flatten(1),
    lambda s, x: x.mean((2, 3), keepdim=True).view(x.size(0), -1),
    lambda s, x: x.mean([-1, -2]),
    lambda s, x: s.mods[1](F.adaptive_avg_pool2d(x, (1, 1))),
    lambda s, x: s.mods[0](x).reshape(x.shape[0], x.shape[1]),
])
def test_global_average_pooling_spellings_meet(forward):
    assert ops_of(forward, nn.AdaptiveAvgPool2d(1), nn.Flatten()) == [
        ("global_avgpool", {}), ("flatten", {"start_dim": 1, "end_dim": -1})]


@pytest.mark.parametrize(("forward", "expect"), [
    (lambda s, x: F.relu6(x), ("hardtanh", {"min_val": 0.0, "max_val": 6.0})),
    (lambda s, x: s.mods[0](x), ("hardtanh", {"min_val": 0.0, "max_val": 6.0})),
    (lambda s, x: F.hardtanh(x), ("hardtanh", {"min_val": -1.0, "max_val": 1.0})),
    (lambda s, x: x.sigmoid(), ("sigmoid", {})),
    (lambda s, x: torch.sigmoid(x), ("sigmoid", {})),
    (lambda s, x: F.silu(x), ("silu", {})),
    (lambda s, x: s.mods[1](x), ("silu", {})),
    (lambda s, x: x.relu(), ("relu", {})),
])
def test_activation_spellings_meet(forward, expect):
    assert ops_of(forward, nn.ReLU6(), nn.SiLU()) == [expect]


def test_channel_shuffle_resolves_shapes_at_trace_time():
    def shuffle(s, x):
        b, c, h, w = x.size()
        y = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous()
        return y.view(b, -1, h, w)

    assert ops_of(shuffle) == [("reshape", {"shape": [None, 2, 2, 6, 6]}), ("permute", {"dims": [0, 2, 1, 3, 4]}),
                               ("reshape", {"shape": [None, 4, 6, 6]})]


def test_identities_vanish():
    from torchvision.ops import StochasticDepth

    assert ops_of(lambda s, x: F.dropout(s.mods[1](s.mods[0](x)), 0.5, s.training) + s.mods[2](x),
                  nn.Dropout(), StochasticDepth(0.5, "row"), nn.Identity()) == [("add", {})]


def test_chunk_becomes_slices_and_cat_concat():
    def swap(s, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat((b, a), dim=1)

    got = ops_of(swap)
    assert got == [("slice", {"slices": [[0, 2, 1], [0, 2, 1], [0, 6, 1], [0, 6, 1]]}),
                   ("slice", {"slices": [[0, 2, 1], [2, 4, 1], [0, 6, 1], [0, 6, 1]]}),
                   ("concat", {"dim": 1})]


class Block(nn.Module):
    def forward(self, x):
        return torch.exp(x)


def test_unsupported_op_names_the_layer_that_uses_it():
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Sequential(nn.ReLU(), Block())).eval()
    with pytest.raises(ExportError, match=r"'1\.1'.*exp is not supported"):
        trace(model, torch.randn(2, 4, 6, 6))
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Sequential(nn.GELU())).eval()
    with pytest.raises(ExportError, match=r"'1\.0'.*GELU is not supported"):
        trace(model, torch.randn(2, 4, 6, 6))


def test_reshape_that_mixes_the_batch_is_refused():
    class M(nn.Module):
        def forward(self, x):
            return x.view(-1, 6)

    with pytest.raises(ExportError, match="batch"):
        trace(M().eval(), torch.randn(2, 4, 6, 6))
