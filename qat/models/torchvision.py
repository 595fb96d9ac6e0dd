"""Any torchvision classification model as a qat model factory (``model=torchvision model.name=...``).

The network is torchvision's own; qat changes only what the data or a small input require:

- the classifier head has one output per class of the data (built that way when the weights are
  random; replaced after loading when they are pretrained);
- a first convolution for ``in_channels`` other than 3 (pretrained: the mean of the RGB filters);
- ``small_input=True``, the usual CIFAR adaptation of an ImageNet stem: the first convolution gets
  stride 1 and a max-pool before the second convolution is removed.

Pretrained weights (``weights="DEFAULT"`` or any name of the model's weights enum) are read from
torch's hub cache (``$TORCH_HOME/hub/checkpoints``) with ``weights_only=True``; they are downloaded
only when ``download=True``, and an absent file is an error that names it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

# torchvision's models with auxiliary classifiers return a tuple while training; qat trains the
# main head only.
_AUX_LOGITS = ("googlenet", "inception_v3")


def classification_models() -> list[str]:
    """Names of torchvision's classification builders (``torchvision.models.list_models``)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def weights_cache_file(url: str) -> Path:
    """Where torch's hub cache keeps the file downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


class WeightsNotCachedError(FileNotFoundError):
    """Pretrained weights are not in the local cache and downloading was not allowed (or failed)."""


@contextlib.contextmanager
def _cached_weights(name: str, download: bool) -> Iterator[None]:
    """While building, torchvision loads its weights through this loader: the local cache first,
    ``weights_only=True`` always (torchvision itself would unpickle with ``weights_only=False``)."""
    from torchvision.models import _api

    if not hasattr(_api, "load_state_dict_from_url"):  # pragma: no cover - a torchvision we do not know
        raise RuntimeError("this torchvision loads weights in a way qat does not know; "
                           "use model.weights=null, or model=custom with your own factory")
    original = _api.load_state_dict_from_url

    def load(url: str, *args: Any, **kwargs: Any) -> dict:
        path = weights_cache_file(url)
        if not path.is_file() and not download:
            raise WeightsNotCachedError(
                f"pretrained weights for torchvision's {name} are not in the local cache: {path} does not exist. "
                f"Copy the file there (from {url}), set TORCH_HOME to a folder whose hub/checkpoints holds it, "
                f"or allow the download with model.download=true")
        kwargs["weights_only"] = True
        try:
            return original(url, *args, **kwargs)
        except OSError as err:  # URLError is an OSError: offline
            raise WeightsNotCachedError(f"could not download the weights of {name} from {url} to {path} ({err}); "
                                        f"offline, copy the file there") from err

    _api.load_state_dict_from_url = load
    try:
        yield
    finally:
        _api.load_state_dict_from_url = original


def _layers(model: nn.Module, kinds) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if type(m) in kinds]


def _replace_head(model: nn.Module, old_classes: int, num_classes: int, name: str) -> None:
    heads = [(n, m) for n, m in _layers(model, (nn.Linear, nn.Conv2d))
             if (m.out_features if isinstance(m, nn.Linear) else m.out_channels) == old_classes]
    if not heads:
        raise ValueError(f"torchvision's {name}: no Linear or Conv2d layer with {old_classes} outputs to resize to "
                         f"{num_classes} classes")
    path, head = heads[-1]
    if isinstance(head, nn.Linear):
        new: nn.Module = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    else:
        new = nn.Conv2d(head.in_channels, num_classes, head.kernel_size, stride=head.stride, padding=head.padding,
                        bias=head.bias is not None)
    model.set_submodule(path, new)


def _adapt_stem(model: nn.Module, in_channels: int, small_input: bool, pretrained: bool, name: str) -> None:
    convs = _layers(model, (nn.Conv2d,))
    if not convs:
        raise ValueError(f"torchvision's {name} has no Conv2d: in_channels / small_input cannot be adapted")
    path, conv = convs[0]
    stride = (1, 1) if small_input else conv.stride
    if conv.in_channels != in_channels or stride != conv.stride:
        new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=stride, padding=conv.padding,
                        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                        padding_mode=conv.padding_mode)
        with torch.no_grad():
            if conv.in_channels == in_channels:
                new.weight.copy_(conv.weight)
            elif pretrained:  # keep the filters' response to a grey image
                mean = conv.weight.mean(dim=1, keepdim=True)
                new.weight.copy_(mean.expand(-1, in_channels, -1, -1) * (conv.in_channels / in_channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        model.set_submodule(path, new)
    if small_input and len(convs) > 1:
        order = [n for n, _ in model.named_modules()]
        second = order.index(convs[1][0])
        for n, m in list(model.named_modules()):
            if isinstance(m, nn.MaxPool2d) and order.index(n) < second:
                model.set_submodule(n, nn.Identity())


def torchvision_model(name: str, num_classes: int, in_channels: int = 3, image_size=None,
                      weights: str | None = None, small_input: bool = False, download: bool = False,
                      kwargs: dict | None = None) -> nn.Module:
    """torchvision's ``name`` classifier for ``num_classes`` classes of ``in_channels``-channel images.

    ``weights``: None (random), ``"DEFAULT"`` or a member name of the model's weights enum
    (``IMAGENET1K_V1``, ...). ``kwargs``: more keyword arguments for the builder (``width_mult``,
    ``dropout``, ...). ``image_size`` is accepted for the uniform factory signature.
    """
    import torchvision

    names = classification_models()
    if name not in names:
        raise ValueError(f"'{name}' is not a torchvision classification model; choose one of: {', '.join(names)}")
    if int(num_classes) < 2 or int(in_channels) < 1:
        raise ValueError(f"need num_classes >= 2 and in_channels >= 1, got {num_classes}, {in_channels}")
    extra = dict(kwargs or {})
    if name in _AUX_LOGITS:
        extra.setdefault("aux_logits", False)
    if weights is None:
        model = torchvision.models.get_model(name, weights=None, num_classes=int(num_classes), **extra)
    else:
        enum = torchvision.models.get_model_weights(name)
        try:
            w = enum[str(weights)] if str(weights) in enum.__members__ else enum.verify(str(weights))
        except (KeyError, ValueError, AttributeError) as err:
            raise ValueError(f"torchvision's {name} has no weights '{weights}'; choose DEFAULT or one of: "
                             f"{', '.join(enum.__members__)}") from err
        with _cached_weights(name, bool(download)):
            model = torchvision.models.get_model(name, weights=w, **extra)
        old = len(w.meta["categories"])
        if old != int(num_classes):
            _replace_head(model, old, int(num_classes), name)
    _adapt_stem(model, int(in_channels), bool(small_input), weights is not None, name)
    return model
