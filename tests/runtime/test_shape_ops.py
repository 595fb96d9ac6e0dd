"""Data-movement ops: what they compute, and clear errors for malformed manifest entries."""

import pytest
import torch

from qat.runtime.errors import FormatError
from qat.runtime.ops import OPS


def make(op: str, inputs=("x",), **fields):
    return OPS[op]({"op": op, "name": op, "inputs": list(inputs), "outputs": ["y"], **fields}, {}, {})


def test_channel_shuffle_is_reshape_permute_reshape():
    x = torch.arange(2 * 6 * 2 * 2, dtype=torch.float32).reshape(2, 6, 2, 2)
    y = make("reshape", shape=[None, 2, 3, 2, 2]).forward(x)
    y = make("permute", dims=[0, 2, 1, 3, 4]).forward(y)
    y = make("reshape", shape=[None, 6, 2, 2]).forward(y)
    ref = x.view(2, 2, 3, 2, 2).transpose(1, 2).contiguous().view(2, 6, 2, 2)
    assert torch.equal(y, ref)


def test_concat_takes_every_input():
    a, b, c = (torch.full((2, k, 3, 3), float(k)) for k in (1, 2, 3))
    assert torch.equal(make("concat", ("a", "b", "c"), dim=1).forward(a, b, c), torch.cat([a, b, c], 1))


@pytest.mark.parametrize(("op", "fields", "match"), [
    ("reshape", {"shape": [4, 2]}, "batch first"),
    ("reshape", {"shape": [None, 0, 2]}, "positive"),
    ("reshape", {"shape": [None, "2"]}, "integers"),
    ("permute", {"dims": [1, 0, 2]}, "permutation starting with 0"),
    ("permute", {"dims": [0, 0, 2]}, "permutation"),
    ("concat", {"dim": 0}, "not the batch"),
    ("maxpool2d", {"kernel_size": [2], "stride": [2, 2], "padding": [0, 0], "dilation": [1, 1],
                   "ceil_mode": True}, "kernel_size"),
    ("avgpool2d", {"kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0], "ceil_mode": False,
                   "count_include_pad": True, "divisor_override": -1}, "divisor_override"),
    ("hardtanh", {"min_val": 1.0, "max_val": -1.0}, "min_val"),
])
def test_malformed_fields_are_clear_errors(op, fields, match):
    with pytest.raises(FormatError, match=match):
        make(op, **fields)


def test_binary_ops_need_two_inputs():
    with pytest.raises(FormatError, match="reads 1 values, expected 2"):
        make("mul", ("a",))


def test_reshape_of_a_wrong_size_is_an_error():
    with pytest.raises(ValueError, match="cannot reshape"):
        make("reshape", shape=[None, 5]).forward(torch.zeros(2, 4))
