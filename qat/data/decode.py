"""Decode lists of image files into one uint8 tensor ``[N, C, H, W]``.

JPEGs are decoded in batches with ``torchvision.io.decode_jpeg`` (the fast path: the real CIFAR-10
copy is 60,000 JPEGs), other formats with ``torchvision.io.decode_image``, and anything torchvision
cannot read (BMP, TIFF, ...) with PIL. Files are read and decoded in chunks on a thread pool (the
decoders release the GIL). A file that cannot be read or decoded raises :class:`ImageDecodeError`
naming it.

Channels: grayscale (1 channel, 1-bit, 16-bit, or gray + alpha) stays 1 channel, everything else
becomes RGB (alpha dropped; palette and CMYK images converted to RGB). If a set mixes grayscale and
colour files, the result is RGB and the grayscale images are replicated over the 3 channels.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from qat.data.errors import DataFormatError, ImageDecodeError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm"})
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHUNK = 256


def _read_bytes(path: Path) -> torch.Tensor:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ImageDecodeError(path, f"cannot read: {e}") from e
    if not raw:
        raise ImageDecodeError(path, "the file is empty")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def _pil_decode(data: torch.Tensor, path: Path) -> torch.Tensor:
    from PIL import Image
    import numpy as np

    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            im.load()
            gray = im.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                arr = np.asarray(im, dtype=np.float64)
                hi = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
                arr = np.clip(arr * (255.0 / hi), 0, 255).round().astype(np.uint8)
            else:
                arr = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise ImageDecodeError(path, f"{type(e).__name__}: {e}") from e
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def _fix(img: torch.Tensor, data: torch.Tensor, path: Path) -> torch.Tensor:
    """Bring a torchvision-decoded image to uint8 [C, H, W] with C in {1, 3}."""
    if img.dim() == 4:  # animated GIF: first frame
        img = img[0]
    if img.dtype == torch.uint16:
        img = (img.to(torch.int32) >> 8).to(torch.uint8)
    elif img.dtype != torch.uint8:
        return _pil_decode(data, path)
    c = img.shape[0]
    if c in (1, 3):
        return img
    mode = ImageReadMode.GRAY if c == 2 else ImageReadMode.RGB
    try:
        out = decode_image(data, mode=mode)
    except Exception:
        return _pil_decode(data, path)
    if out.dim() == 4:
        out = out[0]
    return out if out.dtype == torch.uint8 else _pil_decode(data, path)


def _decode_single(data: torch.Tensor, path: Path) -> torch.Tensor:
    head = data[:26].numpy().tobytes()
    # A palette PNG (IHDR colour type 3) decodes UNCHANGED to its palette *indices*: ask for RGB.
    palette_png = head[:8] == _PNG_MAGIC and len(head) == 26 and head[25] == 3
    try:
        img = decode_image(data, mode=ImageReadMode.RGB if palette_png else ImageReadMode.UNCHANGED)
    except Exception:
        return _pil_decode(data, path)  # raises ImageDecodeError naming the file if PIL fails too
    return _fix(img, data, path)


def _decode_chunk(paths: Sequence[Path], resize_to: tuple[int, int] | None) -> list[torch.Tensor]:
    datas = [_read_bytes(p) for p in paths]
    out: list[torch.Tensor | None] = [None] * len(paths)
    jpeg_idx = [i for i, d in enumerate(datas) if d[:3].numpy().tobytes() == _JPEG_MAGIC]
    if jpeg_idx:
        try:
            decoded = decode_jpeg([datas[i] for i in jpeg_idx], mode=ImageReadMode.UNCHANGED)
        except Exception:
            decoded = None  # some file in the batch is bad: decode one by one to name it
        if decoded is not None:
            for i, img in zip(jpeg_idx, decoded):
                out[i] = _fix(img, datas[i], paths[i])
    for i, img in enumerate(out):
        if img is None:
            out[i] = _decode_single(datas[i], paths[i])
    if resize_to is not None:
        from torchvision.transforms.v2.functional import resize

        for i, img in enumerate(out):
            if tuple(img.shape[-2:]) != resize_to:
                out[i] = resize(img, list(resize_to), antialias=True)
    return out  # type: ignore[return-value]


def decode_images(paths: Sequence[str | os.PathLike], image_size: tuple[int, int] | None = None,
                  progress: bool = True, desc: str = "decoding images",
                  workers: int | None = None) -> torch.Tensor:
    """Decode ``paths`` into one uint8 tensor ``[N, C, H, W]``.

    ``image_size=None``: every image must have the size of the first one (else
    :class:`DataFormatError` naming the file); ``image_size=(H, W)``: every image is resized to it
    (antialiased bilinear).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("decode_images: empty list of files")
    resize_to = (int(image_size[0]), int(image_size[1])) if image_size is not None else None
    workers = max(1, min(8, os.cpu_count() or 1) if workers is None else int(workers))
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]

    from tqdm.auto import tqdm

    images: list[torch.Tensor] = []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        if workers == 1 or len(chunks) == 1:
            results = (_decode_chunk(c, resize_to) for c in chunks)
            for res in results:
                images.extend(res)
                bar.update(len(res))
        else:
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                for res in pool.map(_decode_chunk, chunks, [resize_to] * len(chunks)):
                    images.extend(res)
                    bar.update(len(res))
            finally:  # on an error (bad file, Ctrl-C) do not decode the remaining chunks
                pool.shutdown(wait=True, cancel_futures=True)

    h, w = images[0].shape[-2:]
    for p, img in zip(paths, images):
        if tuple(img.shape[-2:]) != (h, w):
            raise DataFormatError(
                f"image '{p}' is {img.shape[-1]}x{img.shape[-2]} (WxH) but '{paths[0]}' is {w}x{h}: all images "
                f"must have the same size. Set image_size=[H, W] (data.image_size=[{h},{w}]) to resize them.")
    channels = max(img.shape[0] for img in images)
    out = torch.empty((len(images), channels, h, w), dtype=torch.uint8)
    for i, img in enumerate(images):
        out[i] = img  # a 1-channel image broadcasts over 3 channels when the set is RGB
    return out
