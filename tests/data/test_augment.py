"""Batch preprocessing: vectorised crop/flip against a per-image reference, eval determinism,
normalisation values, seeded reproducibility."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qat.data import CIFAR10_MEAN, CIFAR10_STD, BatchPreprocess, channel_stats, prepare_batch, random_crop_flip


def reference_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-image loop with the documented draw order (row offsets, column offsets, flip bits)."""
    n, _, h, w = x.shape
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator) if pad else torch.zeros(n, dtype=torch.long)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator) if pad else torch.zeros(n, dtype=torch.long)
    fl = torch.randint(0, 2, (n,), generator=generator).bool() if flip else torch.zeros(n, dtype=torch.bool)
    out = torch.empty_like(x)
    for i in range(n):
        img = F.pad(x[i], (pad, pad, pad, pad))[:, oy[i]:oy[i] + h, ox[i]:ox[i] + w]
        out[i] = img.flip(-1) if fl[i] else img
    return out


def images(n=16, c=3, h=8, w=8, seed=0):
    return torch.randint(1, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), c=st.sampled_from([1, 3]), h=st.integers(1, 9), w=st.integers(1, 9),
       pad=st.integers(0, 5), flip=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_matches_per_image_reference(n, c, h, w, pad, flip, seed):
    x = images(n, c, h, w, seed)
    got = random_crop_flip(x, pad, flip, torch.Generator().manual_seed(seed))
    ref = reference_crop_flip(x, pad, flip, torch.Generator().manual_seed(seed))
    assert got.shape == x.shape and got.dtype == x.dtype
    assert torch.equal(got, ref)


def test_flip_and_crop_change_images():
    x = images(64)
    flipped = random_crop_flip(x, pad=0, flip=True, generator=torch.Generator().manual_seed(0))
    is_flip = (flipped == x.flip(-1)).flatten(1).all(1)
    is_same = (flipped == x).flatten(1).all(1)
    assert bool((is_flip | is_same).all()) and 10 < int(is_flip.sum()) < 54
    cropped = random_crop_flip(x, pad=4, flip=False, generator=torch.Generator().manual_seed(0))
    assert int((cropped != x).flatten(1).any(1).sum()) > 50
    assert int((cropped == 0).sum()) > 0  # zero padding shows (inputs are all >= 1)


def test_eval_is_deterministic_normalisation_only():
    pre = BatchPreprocess(CIFAR10_MEAN, CIFAR10_STD, augment=True, pad=4, flip=True)
    x = images(8)
    a = pre(x, train=False, generator=torch.Generator().manual_seed(0))
    b = pre(x, train=False, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    expect = (x.float() / 255 - mean) / std
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert torch.allclose(a, expect, atol=1e-5)
    assert not torch.allclose(pre(x, train=True, generator=torch.Generator().manual_seed(0)), expect)
    off = BatchPreprocess(CIFAR10_MEAN, CIFAR10_STD, augment=False)
    assert torch.allclose(off(x, train=True), expect, atol=1e-5)


def test_normalisation_values():
    pre = BatchPreprocess((0.5,), (0.25,))
    x = torch.tensor([0, 255, 128], dtype=torch.uint8).view(3, 1, 1, 1)
    out = pre(x).flatten()
    assert torch.allclose(out, torch.tensor([-2.0, 2.0, (128 / 255 - 0.5) / 0.25]), atol=1e-6)
    with pytest.raises(TypeError):
        pre(x.float())
    with pytest.raises(ValueError):
        BatchPreprocess((0.5,), (0.0,))


def test_seeded_reproducibility():
    x = images(32)
    run = lambda s: prepare_batch(x, True, CIFAR10_MEAN, CIFAR10_STD, generator=torch.Generator().manual_seed(s))
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_channel_stats_exact():
    x = torch.stack([torch.zeros(2, 4, 4, dtype=torch.uint8), torch.full((2, 4, 4), 255, dtype=torch.uint8)])
    x[:, 1] = 51
    mean, std = channel_stats(x)
    assert mean == (0.5, 0.2) and std[0] == 0.5 and std[1] == round(1 / 255, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_augmentation_on_gpu():
    x = images(32)
    pre = BatchPreprocess(CIFAR10_MEAN, CIFAR10_STD)
    cpu = pre(x, train=True, generator=torch.Generator().manual_seed(5))
    gpu = pre(x.cuda(), train=True, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-6)
