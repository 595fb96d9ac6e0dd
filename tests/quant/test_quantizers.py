"""nn.Module quantizers: state, checkpoints, codes, config validation."""

import copy
import io

import pytest
import torch

from qat.quant import functional as QF
from qat.quant.quantizers import (
    QUANTIZERS,
    AffineQuant,
    BinaryWeightQuant,
    Identity,
    LinearQuant,
    LogQuant,
    MinMaxQuant,
    Quantizer,
    SignQuant,
    TanhQuant,
    TernaryQuant,
)


def all_quantizers():
    return [
        Identity(), LinearQuant(8), LinearQuant(4, calibrate="always"), LinearQuant(6, sf=3),
        LinearQuant(1), LogQuant(6), LogQuant(1), TanhQuant(3), MinMaxQuant(4),
        MinMaxQuant(3, observer="ema"), SignQuant(), SignQuant(stochastic=True),
        BinaryWeightQuant(), TernaryQuant(), TernaryQuant(per_channel=True, method="admm"),
        AffineQuant(), AffineQuant(per_channel=False, observer="minmax"),
        AffineQuant(bits=4, symmetric=True, observer="current"),
        AffineQuant(per_channel=True, axis=1),
    ]


def trained(q, batches=3, shape=(4, 3, 5, 5)):
    torch.manual_seed(0)
    q.train()
    for i in range(batches):
        x = (torch.randn(shape) * (1 + i)).requires_grad_()
        q(x).sum().backward()
    return q


def test_identity_returns_input_object():
    x = torch.randn(3, 4, requires_grad=True)
    assert Identity()(x) is x
    assert Identity().bits == 32 and Identity().quantize(x).dequantize() is x


def test_registry_and_interface():
    assert set(QUANTIZERS) == {"identity", "linear", "log", "tanh", "minmax", "sign", "binary",
                               "ternary", "affine"}
    for q in all_quantizers():
        assert isinstance(q, Quantizer) and isinstance(q.bits, int) and isinstance(q.kind, str)
        assert q.kind in QUANTIZERS and isinstance(q, QUANTIZERS[q.kind])
        assert isinstance(repr(q), str)
    assert "bits=8" in repr(AffineQuant()) and "sf=3" in repr(LinearQuant(6, sf=3))


@pytest.mark.parametrize("q", all_quantizers(), ids=lambda q: repr(q))
def test_codes_dequantize_to_forward_exactly(q):
    trained(q)
    q.eval()
    x = torch.randn(4, 3, 5, 5) * 2
    y = q(x)
    c = q.quantize(x)
    assert torch.equal(c.dequantize(), y)
    if q.kind == "identity":
        return
    assert not c.codes.is_floating_point()
    if c.kind in QF.AFFINE_KINDS:
        assert torch.equal(QF.dequantize(c), c.scale.reshape(
            [-1 if d == c.axis else 1 for d in range(4)] if c.axis is not None else [])
            * (c.codes.float() - c.zero_point.reshape(
                [-1 if d == c.axis else 1 for d in range(4)] if c.axis is not None else []).float()))
    lo, hi = int(c.codes.min()), int(c.codes.max())
    if c.kind in ("sign", "binary", "ternary"):
        assert lo >= -1 and hi <= 1 and (c.kind == "ternary" or not (c.codes == 0).any())
    elif c.kind in ("linear", "log"):
        assert -(2 ** (c.bits - 1)) <= lo and hi <= 2 ** (c.bits - 1) - 1
    elif c.kind == "affine":
        assert q.qmin <= lo and hi <= q.qmax and q.qmax - q.qmin < 2 ** c.bits
    else:  # tanh, minmax: unsigned levels
        assert 0 <= lo and hi <= 2 ** c.bits - 1


@pytest.mark.parametrize("make", [
    lambda: LinearQuant(6, calib_batches=2), lambda: LogQuant(5), lambda: MinMaxQuant(4, "ema"),
    lambda: AffineQuant(), lambda: AffineQuant(per_channel=False, observer="minmax"),
    lambda: AffineQuant(per_channel=True, axis=1),
])
def test_state_dict_round_trip(make):
    q = trained(make())
    if isinstance(q, AffineQuant):
        q.disable_observer()
    sd = q.state_dict()
    assert sd, "stateful quantizer has no buffers"
    fresh = make()
    fresh.load_state_dict(sd)
    for k, v in sd.items():
        assert torch.equal(fresh.state_dict()[k], v), k
    q.eval(), fresh.eval()
    x = torch.randn(4, 3, 5, 5) * 3
    assert torch.equal(fresh(x), q(x))
    # whole-module pickling (ddp_spawn, torch.save(model)) works too
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert torch.equal(again(x), q(x))
    assert torch.equal(copy.deepcopy(q)(x), q(x))


def test_buffer_names():
    assert set(dict(LinearQuant(8).named_buffers())) == {"sf", "num_calibrated"}
    assert set(dict(MinMaxQuant(8).named_buffers())) == {"min_val", "max_val"}
    assert set(dict(AffineQuant().named_buffers())) == {
        "min_val", "max_val", "observer_enabled", "fake_quant_enabled"}
    for q in (SignQuant(), BinaryWeightQuant(), TernaryQuant(), TanhQuant(4), Identity()):
        assert not list(q.buffers())


# --------------------------------------------------------------------------- linear / log
def test_linear_calibration_once_takes_min_over_batches():
    q = LinearQuant(8, calib_batches=2)
    small, big = torch.full((10,), 0.9), torch.full((10,), 5.0)
    q.eval()
    q(big)  # eval before calibration: dynamic sf, no state change
    assert q.num_calibrated.item() == 0
    q.train()
    q(small)
    assert q.sf.item() == 7 and q.num_calibrated.item() == 1
    q(big)
    assert q.sf.item() == 7 - 3 and q.num_calibrated.item() == 2
    q(small)  # calibration over: sf kept
    assert q.sf.item() == 4 and q.num_calibrated.item() == 2
    assert torch.equal(q(small), QF.linear_quantize(small, 4, 8))


def test_linear_always_and_fixed():
    q = LinearQuant(8, calibrate="always")
    x = torch.full((4,), 3.0)
    q(x)
    assert q.sf.item() == QF.overflow_sf(x, 8)
    q(x * 100)
    assert q.sf.item() == QF.overflow_sf(x * 100, 8)
    f = LinearQuant(8, sf=2)
    f(x * 100)
    assert f.sf.item() == 2 and torch.equal(f(x * 100), QF.linear_quantize(x * 100, 2, 8))


def test_log_quant_calibrates_on_log_magnitude():
    x = torch.tensor([0.0, 1e-3, 0.5, 8.0])
    q = LogQuant(5)
    y = q(x)
    la = torch.tensor([0.0, abs(torch.log(torch.tensor(1e-3)).item()), 0.6931, 2.0794])
    assert q.sf.item() == QF.overflow_sf(la, 4)
    assert torch.equal(y, QF.log_linear_quantize(x, q.sf.item(), 5))


# --------------------------------------------------------------------------- minmax / affine
def test_minmax_ema_tracks_running_range():
    q = MinMaxQuant(4, observer="ema", averaging_constant=0.5)
    q(torch.tensor([-1.0, 1.0]))
    q(torch.tensor([-3.0, 5.0]))
    assert q.min_val.item() == -2.0 and q.max_val.item() == 3.0
    q.eval()
    q(torch.tensor([-100.0, 100.0]))  # eval: no update
    assert q.min_val.item() == -2.0
    y = q(torch.tensor([-100.0, 0.0, 100.0]))
    assert y[0].item() == pytest.approx(-2.0) and y[2].item() == pytest.approx(3.0)


def test_affine_observers():
    ema = AffineQuant(per_channel=False, averaging_constant=0.25)
    mm = AffineQuant(per_channel=False, observer="minmax")
    for x in (torch.tensor([-1.0, 2.0]), torch.tensor([-5.0, 1.0])):
        ema(x), mm(x)
    assert ema.min_val.item() == -1.0 + 0.25 * (-5.0 + 1.0) and ema.max_val.item() == 2.0 + 0.25 * -1.0
    assert mm.min_val.item() == -5.0 and mm.max_val.item() == 2.0
    pc = AffineQuant(per_channel=True)
    pc(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
    assert pc.min_val.tolist() == [-2.0, 3.0] and pc.max_val.tolist() == [1.0, 4.0]
    scale, zp = pc.calculate_qparams()
    assert scale.shape == zp.shape == (2,)
    act = AffineQuant(per_channel=True, axis=1)
    act(torch.randn(2, 3, 4, 4))
    assert act.min_val.shape == (3,)
    with pytest.raises(RuntimeError, match="observed"):
        AffineQuant().calculate_qparams()


def test_affine_flags_quant_delay_and_freeze():
    q = AffineQuant(per_channel=False)
    x = torch.linspace(-1, 1, 11)
    q.disable_fake_quant()
    assert q(x) is x  # observe only
    assert q.min_val.item() == -1.0
    q.enable_fake_quant()
    assert q(x) is not x
    q.fake_quant_enabled.fill_(0)  # direct buffer writes take effect too (cache keyed on version)
    assert q(x) is x
    q.fake_quant_enabled.fill_(1)
    q.disable_observer()
    q(x * 10)
    assert q.max_val.item() == 1.0  # frozen
    y = q(x * 10)
    scale, zp = q.calculate_qparams()
    assert y.max().item() == pytest.approx((255 - zp.item()) * scale.item())
    assert y.max().item() < 1.01  # clipped to the frozen range, not 10
    # flags travel in the checkpoint
    fresh = AffineQuant(per_channel=False)
    fresh.load_state_dict(q.state_dict())
    assert fresh.observer_enabled.item() == 0
    fresh(x * 10)
    assert fresh.max_val.item() == 1.0


def test_affine_eval_does_not_observe_and_unobserved_uses_own_range():
    q = AffineQuant(per_channel=False).eval()
    x = torch.linspace(-2, 3, 50)
    y = q(x)
    assert q.min_val.numel() == 0
    assert (y - x).abs().max() <= 5 / 255
    assert torch.equal(q.quantize(x).dequantize(), y)


def test_affine_gradient_masked_outside_observed_range():
    q = AffineQuant(per_channel=False)
    q(torch.tensor([-1.0, 1.0]))
    q.disable_observer()
    x = torch.tensor([-3.0, 0.0, 0.5, 3.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


# --------------------------------------------------------------------------- binary / ternary
def test_sign_quant_stochastic_only_in_training():
    torch.manual_seed(0)
    x = torch.zeros(1000)
    q = SignQuant(stochastic=True)
    assert (q(x) == -1).any()
    q.eval()
    assert (q(x) == 1).all()
    x = torch.tensor([-2.0, 0.5], requires_grad=True)
    SignQuant()(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0]


def test_binary_and_ternary_modules_call_the_functions():
    w = torch.randn(6, 3, 3, 3)
    assert torch.equal(BinaryWeightQuant()(w), QF.binary_weight(w))
    assert torch.equal(TernaryQuant()(w), QF.twn_quantize(w))
    alpha, q = QF.ternary_projection(w, per_channel=True)
    out = TernaryQuant(per_channel=True, method="admm")(w)
    assert torch.equal(out, alpha.reshape(-1, 1, 1, 1) * q.float())
    c = TernaryQuant(per_channel=True).quantize(w)
    assert c.scale.shape == (6,) and c.axis == 0 and c.bits == 2


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("make, words", [
    (lambda: LinearQuant(0), "bits"),
    (lambda: LinearQuant(17), "bits"),
    (lambda: LinearQuant(8, overflow_rate=1.0), "overflow_rate"),
    (lambda: LinearQuant(8, overflow_rate=-0.1), "overflow_rate"),
    (lambda: LinearQuant(8, sf=3, calibrate="once"), "sf=None"),
    (lambda: LinearQuant(8, calibrate="never"), "sf"),
    (lambda: LinearQuant(8, calibrate="sometimes"), "calibrate"),
    (lambda: LinearQuant(8, calib_batches=0), "calib_batches"),
    (lambda: LogQuant(2), "bits must be 1 or >= 3"),
    (lambda: TanhQuant(0), "bits"),
    (lambda: MinMaxQuant(4, observer="mean"), "observer"),
    (lambda: AffineQuant(averaging_constant=0.0), "averaging_constant"),
    (lambda: AffineQuant(momentum=1.5), "averaging_constant"),
    (lambda: AffineQuant(bits=1, symmetric=True), "bits"),
    (lambda: AffineQuant(axis=1.5), "axis"),
    (lambda: TernaryQuant(threshold=0.0), "threshold"),
    (lambda: TernaryQuant(method="lloyd"), "method"),
])
def test_bad_config_raises_helpful_value_error(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_affine_axis_out_of_range_message():
    with pytest.raises(ValueError, match="axis"):
        AffineQuant(axis=3)(torch.randn(4, 4))
