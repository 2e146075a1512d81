"""The ``pixels`` extractor: images or MNIST-style arrays as raw uint8 tensors (rows, C, H, W).

Inputs are ``.npy`` / ``.npz`` arrays of shape (N, H, W), (N, C, H, W) or (N, H, W, C) with values
0-255, or the image inputs of the other image extractors (folder, zip, CSV of paths), all resized
to one size. The file stores ``/features`` as uint8 of shape (rows, C, H, W) with a ``shape``
attribute; readers see each row as C·H·W features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flowgmm_cli.errors import InputError, reading

from .base import EmbedRequest
from .csv_input import file_sha256
from .image_input import ImageListing, image_chunks, listing_for, read_image, skipped_attrs
from .streaming import Chunk, chunk_ranges, resume_key, stream_to_file

__all__ = ["PixelsExtractor", "to_nchw"]

_ARRAY_SUFFIXES = (".npy", ".npz")


def to_nchw(array: np.ndarray, where: str) -> np.ndarray:
    """Images as (N, C, H, W) uint8: (N, H, W) gains a channel axis, (N, H, W, C) is transposed.

    Example:
        >>> to_nchw(np.zeros((5, 28, 28), np.uint8), "x").shape
        (5, 1, 28, 28)
        >>> to_nchw(np.zeros((5, 32, 32, 3), np.uint8), "x").shape
        (5, 3, 32, 32)
    """
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[1] not in (1, 3, 4) and array.shape[-1] in (1, 3, 4):
        array = array.transpose(0, 3, 1, 2)
    elif array.ndim != 4:
        raise InputError(f"{where} has shape {array.shape}; expected images as (N, H, W), (N, C, H, W) or (N, H, W, C).")
    if array.shape[0] == 0:
        raise InputError(f"{where} holds no images.")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"{where} holds {array.dtype} values; pixels must be integers 0-255 (uint8).")
        if array.min() < 0 or array.max() > 255:
            raise InputError(f"{where} has values outside 0-255; pixels must be uint8.")
    return array


class PixelsExtractor:
    """Raw pixels, no model: for flows on images, and as the raw-pixel baseline of the image extractors."""

    name = "pixels"
    description = "raw uint8 pixels (N, C, H, W) from images or .npy/.npz arrays (no model)"
    dim = None
    distributed = True

    def weights_status(self) -> str:
        return "none needed"

    def embed(self, request: EmbedRequest) -> int:
        if Path(request.source).suffix.lower() in _ARRAY_SUFFIXES:
            return self._embed_arrays(request)
        return self._embed_images(request)

    def _embed_arrays(self, request: EmbedRequest) -> int:
        path, options = Path(request.source), request.options
        if not path.is_file():
            raise InputError(f"Input array file '{path}' does not exist.")
        images, labels = _load_arrays(path, options.get("array_key"), options.get("label_key"))
        if options.get("image_size") or options.get("grayscale"):
            raise InputError("--image-size and --grayscale apply to image files; arrays are stored as they are.")
        images = to_nchw(images, f"'{path}'")
        digest = file_sha256(path)
        attrs = {"extractor": self.name, "model": "", "pooling": "", "source_sha256": digest, "shape": list(images.shape[1:]), "units": "shared"}
        chunk_size = options.get("chunk_size") or 1024

        def chunks(start: int, owns):
            for begin, end in chunk_ranges(start, len(images), chunk_size, owns):
                ids = np.arange(begin, end).astype(str)
                yield Chunk(end - begin, ids, np.asarray(images[begin:end], dtype=np.uint8),
                            None if labels is None else labels[begin:end].astype(str), start=begin)  # fmt: skip

        state = stream_to_file(
            request, dim=int(np.prod(images.shape[1:])), attrs=attrs, total=len(images), chunks=chunks, chunk_size=chunk_size,
            key=resume_key(digest, array_key=options.get("array_key"), label_key=options.get("label_key")),
            with_labels=labels is not None, dtype=np.uint8, sample_shape=tuple(images.shape[1:]),
        )  # fmt: skip
        return state.inputs

    def _embed_images(self, request: EmbedRequest) -> int:
        options = request.options
        listing = listing_for(request)
        mode, size = _first_image_format(listing, options.get("grayscale"), options.get("image_size"))
        channels = 1 if mode == "L" else 3
        shape = (channels, size[1], size[0])
        attrs = {"extractor": self.name, "model": "", "pooling": "", "source_sha256": listing.sha256, "shape": list(shape), "units": "shared"}
        key = resume_key(listing.sha256, mode=mode, size=size, on_error=options.get("on_error"))
        chunk_size = options.get("chunk_size") or 1024
        state = stream_to_file(
            request, dim=int(np.prod(shape)), attrs=attrs, key=key, total=len(listing.items),
            with_labels=listing.has_labels, dtype=np.uint8, sample_shape=shape, chunk_size=chunk_size,
            chunks=lambda start, owns: image_chunks(
                listing, start, _ToArray(size, resize=options.get("image_size") is not None), np.asarray, mode=mode,
                batch_size=options.get("batch_size") or 64, workers=0, chunk_size=chunk_size,
                on_error=options.get("on_error") or "fail", owns=owns,
            ),
            finish=lambda state: skipped_attrs(request, state),
        )  # fmt: skip
        return state.inputs - len(state.skipped)


def _load_arrays(path: Path, array_key: str | None, label_key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    with reading(path, "NumPy file", "give an .npy or .npz file of images saved by numpy"):
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        if label_key:
            raise InputError("--label-key needs an .npz file that holds a labels array.")
        return loaded, None
    with loaded:
        keys = list(loaded.keys())
        if array_key is None:
            if len(keys) != 1:
                raise InputError(f"'{path}' holds several arrays ({', '.join(keys)}); choose the images with --array-key.")
            array_key = keys[0]
        for key in filter(None, (array_key, label_key)):
            if key not in keys:
                raise InputError(f"'{path}' has no array '{key}' (arrays: {', '.join(keys)}).")
        images = loaded[array_key]
        labels = loaded[label_key] if label_key else None
    if labels is not None and len(labels) != len(images):
        raise InputError(f"'{path}' has {len(images)} images in '{array_key}' but {len(labels)} labels in '{label_key}'.")
    return images, labels


def _first_image_format(listing: ImageListing, grayscale: bool, image_size: int | None) -> tuple[str, tuple[int, int]]:
    """The colour mode ("L" or "RGB") and (width, height) that every image is stored in."""
    first = listing.items[0]
    with reading(first.location, "image", "fix or remove it"):
        image = read_image(first)
    mode = "L" if grayscale or image.mode in ("L", "1", "I", "I;16", "F") else "RGB"
    return mode, (image_size, image_size) if image_size else image.size


class _ToArray:
    """An image as a (C, H, W) uint8 array of the given size; a size mismatch is an error unless resizing."""

    def __init__(self, size: tuple[int, int], resize: bool) -> None:
        self.size, self.resize = size, resize

    def __call__(self, image: Any) -> Any:
        import torch
        from PIL import Image

        if image.size != self.size:
            if not self.resize:
                raise ValueError(f"it is {image.size[0]}x{image.size[1]} but the first image is {self.size[0]}x{self.size[1]}; "
                                 "pass --image-size to resize all")  # fmt: skip
            image = image.resize(self.size, Image.Resampling.BILINEAR)
        array = np.array(image, dtype=np.uint8)  # a writable copy for torch
        return torch.from_numpy(array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1)))
