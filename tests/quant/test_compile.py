"""torch.compile over prepared models: no graph breaks once the first step has sized the observers,
and the compiled model computes what the eager one does, also after the recipes' step-scheduled
switches flip (which recompiles: the switches are Python-side mirrors, qat.quant.host_state).

dynamo is run with the ``aot_eager`` backend: it traces forward and backward as inductor would, in
seconds (inductor's C++ compilation is exercised by tests/test_experiment_compile.py)."""

import copy

import pytest
import torch
import torch._dynamo as dynamo
import torch.nn.functional as F
from torch import nn

from qat.quant.host_state import refresh_host_state
from qat.recipes import RECIPES, recipe

COMPILABLE = sorted(set(RECIPES) - {"torch_ao_qat"})  # torch.ao's fake-quant modules are torch's own


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Hardtanh(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def prepared(name: str, total_steps: int = 100):
    rec = recipe(name)
    net = rec.prepare(small_net())
    net.train()
    rec.on_train_start(net, total_steps=total_steps)
    return net, rec


@pytest.mark.parametrize("name", COMPILABLE)
def test_training_forward_has_no_graph_break_after_the_first_step(name):
    net, _ = prepared(name)
    x = torch.randn(4, 3, 8, 8)
    net(x)  # the first step sizes the per-channel observers (a resize_, which dynamo does not trace)
    dynamo.reset()
    ex = dynamo.explain(net)(x)
    dynamo.reset()
    assert ex.graph_break_count == 0, [b.reason for b in ex.break_reasons]


def train_steps(net, rec, opt, x, y, steps, start):
    losses = []
    for i in range(start, start + steps):
        loss = F.cross_entropy(net(x), y)
        p = rec.penalty(net)
        loss = loss if p is None else loss + p
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.after_optimizer_step(net, i + 1)
        losses.append(loss.detach())
    return torch.stack(losses)


@pytest.mark.parametrize("name", ["qat_uint8", "admm_ternary"])
def test_compiled_training_follows_the_switches_like_eager(name):
    """Ten steps through every phase (qat_uint8: observers and BN freeze; ADMM: projected phase),
    eager and compiled side by side: same losses, same weights, same deployed outputs."""
    total = 10
    eager, rec_e = prepared(name, total)
    comp, rec_c = prepared(name, total)
    comp.load_state_dict(eager.state_dict())
    dynamo.reset()
    compiled = torch.compile(comp, backend="aot_eager")
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (eager, comp)]
    le = train_steps(eager, rec_e, opts[0], x, y, total, 0)
    lc = train_steps(compiled, rec_c, opts[1], x, y, total, 0)
    torch.testing.assert_close(lc, le, rtol=1e-4, atol=1e-5)
    for (k, a), b in zip(eager.state_dict().items(), comp.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)
    if name == "qat_uint8":
        assert not any(m.host("observer_enabled") for m in comp.modules() if hasattr(m, "observer_enabled"))
    else:
        assert all(m.host("projecting") for m in comp.modules() if hasattr(m, "projecting"))
    eager.eval(), comp.eval()
    with rec_e.deployed(eager), rec_c.deployed(comp):
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)
    dynamo.reset()


def test_mirrors_follow_load_state_dict_and_direct_writes():
    net, _ = prepared("admm_ternary")
    q = next(m for m in net.modules() if hasattr(m, "projecting"))
    sd = copy.deepcopy(net.state_dict())
    q.set_host("projecting", True)
    assert q._host_projecting == 1 and bool(q.projecting)
    net.load_state_dict(sd)  # a checkpoint from before the projected phase
    assert q._host_projecting == 0
    q.projecting.fill_(True)  # a direct write: the mirror catches up on the next eager read or refresh
    refresh_host_state(net)
    assert q._host_projecting == 1


@pytest.mark.slow  # inductor's C++ compilation of forward and backward: about a minute on 2 cores
def test_inductor_compiles_qat_uint8_through_its_first_steps():
    """With automatic dynamic shapes (``compile()``), the observers sized on the first step made dynamo
    recompile symbolically, and inductor failed on the backward ("Cannot convert expression to float");
    ``compile=true`` uses ``dynamic=False``."""
    net, rec = prepared("qat_uint8", total_steps=4)
    eager = copy.deepcopy(net)
    net.compile(dynamic=False)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    for step in range(1, 5):
        for m in (net, eager):
            F.cross_entropy(m(x), y).backward()
            rec.after_optimizer_step(m, step)
    torch.testing.assert_close(net(x), eager(x), rtol=1e-4, atol=1e-5)
    dynamo.reset()
