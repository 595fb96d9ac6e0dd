"""Building blocks of the better binary networks (options of the ``bnn`` recipe) and the model edits
that insert them.

Every block is a per-channel float operation that the exporter either folds into the integer
threshold of the next sign (when it sits between a binary layer's accumulator and the next sign, and
the composite stays monotone) or keeps as a float op of the manifest (``scale``, ``shift``,
``rprelu``; the Bi-Real shortcut's ``add``) with the model's own arithmetic, so the export computes
exactly what the model computes either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qat.models.resnet import PadShortcut
from qat.quant.layers import QuantConv2d, QuantLinear


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape([1, -1] + [1] * (x.dim() - 2))


class ChannelScale(nn.Module):
    """Learned per-channel scale of a binary layer's output (XNOR-Net++, Bulat & Tzimiropoulos 2019,
    "XNOR-Net++: Improved Binary Neural Networks", Sec. 3; the learned scales of Real-to-Binary
    networks, Martinez et al. 2020).

    Forward: ``y[:, c] = gamma_c * a[:, c]`` where ``a`` is the binary layer's integer accumulator
    (XNOR-Net's analytic ``alpha * K`` replaced by one factor learned discriminatively).
    Backward: ``dL/da = gamma_c dL/dy``, ``dL/dgamma_c = sum over N, H, W of a * dL/dy``.

    ``gamma`` starts at 1 and is kept positive (``clamp_positive`` after each optimizer step): a
    positive scale commutes with max pooling, so it folds into the next sign's threshold wherever
    the accumulator does. Followed directly by a BatchNorm (as in ResNet-20), BatchNorm's own
    scale makes it redundant at inference; it changes only the training dynamics.
    """

    MIN = 1e-4

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _per_channel(self.scale, x)

    @torch.no_grad()
    def clamp_positive(self) -> None:
        self.scale.clamp_(min=self.MIN)


class ChannelShift(nn.Module):
    """Learnable per-channel shift ``y = x + b_c`` (ReActNet's ``LearnableBias``, Liu et al. 2020,
    "ReActNet: Towards Precise Binary Neural Network with Generalized Activation Functions").

    Before a sign it is ReActNet's RSign, a learnable threshold: ``sign(x + b_c)`` is ``+1`` from
    ``x >= -b_c`` on. Forward ``x + b``; backward ``dL/dx = dL/dy``, ``dL/db_c = sum dL/dy[:, c]``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + _per_channel(self.shift, x)


class RPReLU(nn.Module):
    """ReActNet's RPReLU (Liu et al. 2020, Sec. 3.2), a PReLU with learnable shifts per channel::

        f(x) = x - gamma_c + zeta_c          if x > gamma_c
               beta_c (x - gamma_c) + zeta_c  otherwise

    computed as ReActNet's code does: ``prelu(x + b_in, beta) + b_out`` (``b_in = -gamma``,
    ``b_out = zeta``). Backward: PReLU's (slope 1 or ``beta_c``; ``beta_c`` and the shifts learn).
    ``beta`` starts at 0.25 (PReLU's default), the shifts at 0. Monotone while ``beta_c >= 0``;
    the exporter folds it into a threshold only then.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias_in = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), 0.25))
        self.bias_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.prelu(x + _per_channel(self.bias_in, x), self.slope)
        return y + _per_channel(self.bias_out, x)


class BiRealConv(nn.Module):
    """A binary convolution with Bi-Real Net's real-valued shortcut (Liu et al. 2018, "Bi-Real Net:
    Enhancing the Performance of 1-bit CNNs with Improved Representational Capability and Advanced
    Training Algorithm", Sec. 3.1)::

        y = BN(pool(conv(x))) + shortcut(x)

    ``shortcut`` is ResNet's option A (subsample by the conv's and pool's stride, zero-pad the new
    channels), so no parameter is added. The real-valued ``x`` (the previous block's output, before
    its sign) is carried around every binary convolution, which keeps the representational capacity
    of the real activations. Backward: the sum's, both branches.
    """

    def __init__(self, conv: nn.Module, bn: nn.Module, pool: nn.Module | None = None):
        super().__init__()
        self.conv, self.pool, self.bn = conv, pool if pool is not None else nn.Identity(), bn
        stride = int(conv.stride[0])
        if pool is not None:
            stride *= int(pool.stride if isinstance(pool.stride, int) else pool.stride[0])
        extra = int(conv.out_channels) - int(conv.in_channels)
        if extra < 0:
            raise ValueError(f"Bi-Real shortcut: the conv reduces channels ({conv.in_channels} -> "
                             f"{conv.out_channels}); option-A shortcuts only pad")
        self.shortcut = PadShortcut(stride, extra) if stride != 1 or extra else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pool(self.conv(x))) + self.shortcut(x)


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (QuantConv2d, QuantLinear)) or super().is_leaf_module(m, qualname)


def _graph(model: nn.Module):
    return _LeafTracer().trace(model), dict(model.named_modules())


def _single_user(node):
    return next(iter(node.users)) if len(node.users) == 1 else None


def add_bireal_shortcuts(model: nn.Module, layers: list[str]) -> list[str]:
    """Wrap each conv in ``layers`` whose output reaches a BatchNorm2d through at most one MaxPool2d
    (each the only reader of the value before it) into :class:`BiRealConv`, in place. Returns the
    names wrapped."""
    graph, modules = _graph(model)
    wrapped = []
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in layers or not isinstance(modules[node.target], nn.Conv2d):
            continue
        nxt, pool = _single_user(node), None
        if nxt is not None and nxt.op == "call_module" and isinstance(modules.get(nxt.target), nn.MaxPool2d):
            pool, nxt = nxt, _single_user(nxt)
        if nxt is None or nxt.op != "call_module" or not isinstance(modules.get(nxt.target), nn.BatchNorm2d):
            continue
        block = BiRealConv(modules[node.target], modules[nxt.target],
                           modules[pool.target] if pool is not None else None)
        model.set_submodule(node.target, block)
        model.set_submodule(nxt.target, nn.Identity())
        if pool is not None:
            model.set_submodule(pool.target, nn.Identity())
        wrapped.append(node.target)
    return wrapped


def _channels(node, modules) -> int | None:
    """Channels of the value ``node`` computes: walk back to the module that sets them."""
    while node is not None:
        if node.op == "call_module":
            m = modules[node.target]
            for attr in ("num_features", "out_channels", "out_features"):
                if hasattr(m, attr):
                    return int(getattr(m, attr))
            if isinstance(m, BiRealConv):
                return int(m.bn.num_features)
        args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        node = args[0] if args else None
    return None


def replace_activations(model: nn.Module, kinds: tuple[type, ...], make) -> int:
    """Replace every module of a type in ``kinds`` by ``make(channels)``, channels read from the
    graph (the BatchNorm, conv or linear layer the activation's input comes from). Returns how many."""
    graph, modules = _graph(model)
    done = 0
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], kinds):
            c = _channels(node.args[0], modules)
            if c is None:
                raise ValueError(f"cannot tell the channels of activation '{node.target}' from the graph")
            model.set_submodule(node.target, make(c))
            done += 1
    return done


def wrap_layer(model: nn.Module, name: str, shift: bool, scale: bool) -> None:
    """``[ChannelShift(in)] -> layer -> [ChannelScale(out)]`` at ``name`` (an nn.Sequential)."""
    layer = model.get_submodule(name)
    conv = isinstance(layer, nn.Conv2d)
    parts = []
    if shift:
        parts.append(ChannelShift(layer.in_channels if conv else layer.in_features))
    parts.append(layer)
    if scale:
        parts.append(ChannelScale(layer.out_channels if conv else layer.out_features))
    model.set_submodule(name, nn.Sequential(*parts))
