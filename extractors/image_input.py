"""Image inputs of ``embed``: a folder (recursive), a zip, or a CSV with a path column.

Listing gives every image an id (the path relative to the folder or zip without its extension,
or the CSV's id column), an optional label (the parent folder's name, or the CSV's label column)
and a content hash of the whole input, so a resumed embed can tell the input has not changed.
Images are decoded lazily by :class:`ImageDataset`, in DataLoader workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from flowgmm_cli.errors import InputError

from .base import EmbedRequest
from .csv_input import CsvSource
from .streaming import Chunk, EmbedState, Owns, chunk_ranges, every_chunk

__all__ = ["IMAGE_SUFFIXES", "ImageDataset", "ImageItem", "ImageListing", "image_chunks", "list_images", "listing_for", "read_image", "skipped_attrs"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass(frozen=True)
class ImageItem:
    """One image: its id, its label ('' = unlabeled) and where its bytes are (a path or a zip member)."""

    id: str
    label: str
    location: str


@dataclass
class ImageListing:
    """All images of an input, in order, with the zip they live in (if any) and a hash of the input."""

    items: list[ImageItem]
    zip_path: Path | None
    sha256: str
    label: str

    @property
    def has_labels(self) -> bool:
        return any(item.label for item in self.items)


def list_images(
    source: str, *, path_column: str = "path", id_column: str = "id", label_column: str | None = None,
    labels_from_folders: bool = False,
) -> ImageListing:  # fmt: skip
    """List the images of a folder, a zip or a CSV, checking ids are unique and the input is not empty."""
    path = Path(source)
    if source == "-":
        raise InputError("Images cannot come from standard input; give a folder, a zip or a CSV file.")
    if path.is_dir():
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        items = _items_from_names(names, labels_from_folders)
        listing = ImageListing([ImageItem(i.id, i.label, str(path / i.location)) for i in items], None, "", str(path))
    elif path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = sorted(n for n in archive.namelist() if not n.endswith("/") and PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES)
        listing = ImageListing(_items_from_names(names, labels_from_folders), path, "", str(path))
    elif path.is_file() and path.suffix.lower() == ".csv":
        listing = _items_from_csv(path, path_column, id_column, label_column)
    elif path.exists():
        raise InputError(f"Input '{source}' is not a folder, a zip or a .csv file of image paths.")
    else:
        raise InputError(f"Input '{source}' does not exist.")
    if not listing.items:
        raise InputError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in '{source}'.")
    _check_unique(listing)
    listing.sha256 = _content_hash(listing)
    return listing


def listing_for(request: EmbedRequest) -> ImageListing:
    """The images an ``embed`` request names, with its path, id and label options."""
    options = request.options
    return list_images(
        request.source, path_column=options.get("path_column") or "path", id_column=request.id_column,
        label_column=request.label_column, labels_from_folders=bool(options.get("labels_from_folders")),
    )  # fmt: skip


def _items_from_names(names: list[str], labels_from_folders: bool) -> list[ImageItem]:
    items = []
    for name in names:
        relative = PurePosixPath(name)
        label = relative.parent.name if labels_from_folders else ""
        items.append(ImageItem(str(relative.with_suffix("")), label, name))
    return items


def _items_from_csv(path: Path, path_column: str, id_column: str, label_column: str | None) -> ImageListing:
    items = []
    for chunk in CsvSource(str(path)).chunks({path_column: "--path-column"}, id_column, label_column):
        locations = chunk.frame[path_column].tolist()
        labels = chunk.labels if chunk.labels is not None else [""] * len(locations)
        items += [ImageItem(str(i), str(lab), str(path.parent / loc)) for i, lab, loc in zip(chunk.ids, labels, locations)]
    return ImageListing(items, None, "", str(path))


def _check_unique(listing: ImageListing) -> None:
    seen: dict[str, str] = {}
    for item in listing.items:
        if item.id in seen:
            raise InputError(
                f"Images '{seen[item.id]}' and '{item.location}' in '{listing.label}' get the same id '{item.id}'; "
                "rename one of them."
            )
        seen[item.id] = item.location


def _content_hash(listing: ImageListing) -> str:
    """SHA-256 over every image's id, label and bytes (a missing file counts as missing)."""
    digest = hashlib.sha256()
    archive = zipfile.ZipFile(listing.zip_path) if listing.zip_path else None
    try:
        for item in listing.items:
            digest.update(f"{item.id}\0{item.label}\0".encode())
            try:
                data = archive.read(item.location) if archive else Path(item.location).read_bytes()
                digest.update(hashlib.sha256(data).digest())
            except (OSError, KeyError):
                digest.update(b"missing")
    finally:
        if archive:
            archive.close()
    return digest.hexdigest()


def read_image(item: ImageItem, archive: zipfile.ZipFile | None = None, mode: str | None = None) -> Any:
    """Decode one image with Pillow, converted to ``mode`` (e.g. "RGB") when given.

    Raises ``OSError`` or ``ValueError`` when the image is missing or unreadable.
    """
    from PIL import Image

    data = archive.read(item.location) if archive is not None else Path(item.location).read_bytes()
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert(mode) if mode and image.mode != mode else image


class ImageDataset:
    """A map-style dataset over ``items`` giving ``(position, tensor or None, error or '')``.

    Unreadable images come back as ``None`` with the reason, so the caller decides to fail or skip;
    each DataLoader worker opens the zip (if any) once.
    """

    def __init__(self, listing: ImageListing, items: list[ImageItem], transform: Callable[[Any], Any], mode: str | None) -> None:
        self.listing, self.items, self.transform, self.mode = listing, items, transform, mode
        self._archive: zipfile.ZipFile | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> tuple[int, Any, str]:
        if self.listing.zip_path is not None and self._archive is None:
            self._archive = zipfile.ZipFile(self.listing.zip_path)
        from PIL import UnidentifiedImageError

        try:
            image = read_image(self.items[position], self._archive, self.mode)
            return position, self.transform(image), ""
        except UnidentifiedImageError:
            return position, None, "not an image format Pillow can read"
        except FileNotFoundError:
            return position, None, "no such file"
        except (OSError, ValueError, KeyError, SyntaxError) as error:
            return position, None, str(error) or type(error).__name__


def collate(batch: list[tuple[int, Any, str]]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """Stack the readable images of a batch; return their positions and the failures separately."""
    import torch

    good = [(position, tensor) for position, tensor, _ in batch if tensor is not None]
    failed = [(position, error) for position, tensor, error in batch if tensor is None]
    stacked = torch.stack([tensor for _, tensor in good]) if good else None
    return [position for position, _ in good], stacked, failed


def image_chunks(
    listing: ImageListing, start: int, transform: Callable[[Any], Any], compute: Callable[[Any], Any], *,
    mode: str | None, batch_size: int, workers: int, chunk_size: int, on_error: str, owns: Owns = every_chunk,
) -> Iterator[Chunk]:  # fmt: skip
    """Decode (to ``mode``), transform and ``compute`` the images from position ``start`` on, in chunks.

    Chunks are those of :func:`~extractors.streaming.chunk_ranges` that ``owns`` selects; batches
    stay inside a chunk. ``on_error="fail"`` stops at the first unreadable image, naming it;
    ``"skip"`` leaves it out and lists its id in the chunk.
    """
    import numpy as np
    from torch.utils.data import DataLoader

    items = listing.items
    ranges = chunk_ranges(start, len(items), chunk_size, owns)
    batches = [[range(b, min(b + batch_size, end)) for b in range(begin, end, batch_size)] for begin, end in ranges]
    loader = DataLoader(
        ImageDataset(listing, items, transform, mode), batch_sampler=[list(batch) for chunk in batches for batch in chunk],
        num_workers=workers, collate_fn=collate, persistent_workers=False,
    )  # fmt: skip
    loaded = iter(loader)
    for (begin, end), chunk_batches in zip(ranges, batches):
        pending: list[tuple[list[int], Any]] = []
        skipped: list[str] = []
        for _ in chunk_batches:
            positions, tensors, failed = next(loaded)
            for position, error in failed:
                item = items[position]
                if on_error == "fail":
                    raise InputError(f"Image '{item.location}' could not be read ({error}); fix or remove it, or pass --on-error skip.")
                skipped.append(item.id)
            if positions:
                pending.append((positions, np.asarray(compute(tensors))))
        positions = [p for part, _ in pending for p in part]
        rows = np.concatenate([values for _, values in pending]) if pending else np.zeros((0,))
        yield Chunk(end - begin, [items[p].id for p in positions], rows, [items[p].label for p in positions], skipped=skipped, start=begin)


def skipped_attrs(request: EmbedRequest, state: EmbedState) -> dict[str, Any]:
    """Report skipped images on stderr and keep their ids in the file (``skipped_ids``, a JSON list)."""
    if state.skipped and request.console is not None:
        shown = ", ".join(state.skipped[:20]) + (" …" if len(state.skipped) > 20 else "")
        request.console.print(f"Warning: skipped {len(state.skipped)} unreadable images: {shown}")
    return {"skipped_ids": json.dumps(state.skipped)}
