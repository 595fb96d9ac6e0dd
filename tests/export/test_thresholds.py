"""BatchNorm + hard tanh + sign folded to one threshold per channel: exact for every reachable
accumulator, ties included, and close to the BNN paper's tau = mu - beta sigma / gamma."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qat.export.thresholds import analytic_thresholds, find_thresholds, f32_to_key, key_to_f32


def _bn(c, seed, ties=False):
    g = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm2d(c).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randint(-20, 20, (c,), generator=g).float() if ties
                              else torch.randn(c, generator=g) * 10)
        bn.running_var.uniform_(0.1, 30, generator=g)
        bn.weight.copy_(torch.randn(c, generator=g))
        bn.weight[0] = 0.0  # a constant channel
        bn.bias.copy_(torch.zeros(c) if ties else torch.randn(c, generator=g))
    return bn


def _chain(bn):
    params = {"weight": bn.weight.detach(), "bias": bn.bias.detach(), "running_mean": bn.running_mean,
              "running_var": bn.running_var}
    return [({"op": "batchnorm", "eps": bn.eps}, params), ({"op": "hardtanh", "min_val": -1.0, "max_val": 1.0}, {})]


def _apply(t, d, a):
    return np.where(d > 0, a >= t, a < t)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_integer_threshold_is_exact_everywhere(seed, ties):
    c, k, hw = 12, 40, (3, 5)
    bn = _bn(c, seed, ties)
    t, d = find_thresholds(_chain(bn), (c,) + hw, "int", k)
    a = torch.arange(-k, k + 1, dtype=torch.float32)
    x = a.reshape(-1, 1, 1, 1).expand(-1, c, *hw).contiguous()
    model = (torch.nn.functional.hardtanh(bn(x)) >= 0)[:, :, 0, 0].numpy()  # sign(x) = +1 iff x >= 0
    got = _apply(t[None, :], d[None, :], a.numpy()[:, None])
    np.testing.assert_array_equal(got, model)
    tau = analytic_thresholds(bn)
    live = bn.weight.detach().numpy() != 0
    inside = live & (np.abs(tau) < k)
    assert np.all(np.abs(t[inside] - np.ceil(tau[inside])) <= 1)
    assert np.all(d[live] == np.where(bn.weight.detach().numpy()[live] > 0, 1, -1))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_float_threshold_matches_batchnorm(seed):
    c = 6
    bn = _bn(c, seed)
    t, d = find_thresholds(_chain(bn), (c, 4), "float")
    g = torch.Generator().manual_seed(seed)
    near = torch.from_numpy(np.where(np.isfinite(t), t, 0).astype(np.float32))  # at, above, below T
    near = torch.stack([torch.nextafter(near, torch.tensor(-np.inf)), near,
                        torch.nextafter(near, torch.tensor(np.inf))])
    x = torch.cat([torch.randn(400, c, generator=g) * 30, near])
    x = x[:, :, None, None].expand(-1, c, 1, 4).contiguous().float()
    model = (torch.nn.functional.hardtanh(bn(x)) >= 0)[:, :, 0, 0].numpy()
    got = _apply(t[None, :], d[None, :], x[:, :, 0, 0].numpy())
    np.testing.assert_array_equal(got, model)


def test_float_order_keys_round_trip():
    f = np.array([-np.inf, -3.5, -1e-40, -0.0, 0.0, 1e-40, 2.0, np.inf], np.float32)
    k = f32_to_key(f)
    assert np.all(np.diff(k) >= 0) and k[3] == k[4] == 0
    np.testing.assert_array_equal(key_to_f32(k)[[0, 1, 2, 4, 5, 6, 7]], f[[0, 1, 2, 4, 5, 6, 7]])
