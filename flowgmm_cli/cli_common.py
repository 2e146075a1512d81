"""What every ``flowgmm`` command module shares: the Typer app, common options and model loading."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import typer

from .errors import InputError
from .targets import UNLABELED

if TYPE_CHECKING:
    from .estimator import FlowGMMClassifier
    from .features import FeatureFile
    from .stores import FeatureStream

__all__ = ["QUIET_HELP", "THREADS_HELP", "Device", "Quiet", "Threads", "use_threads", "app", "labeled_classes", "labeled_names", "load_model_for", "row_classes"]

app = typer.Typer(
    name="flowgmm",
    help="Semi-supervised classification with normalizing flows (FlowGMM): embed, train, predict, evaluate.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

QUIET_HELP = "No progress, only errors."
THREADS_HELP = "CPU threads for torch (default: torch's choice, one per core); 1 is faster when other jobs share the cores."
Quiet = typer.Option(False, "--quiet", "-q", help=QUIET_HELP)
Device = typer.Option("auto", help="auto (CUDA when available), cpu, cuda or cuda:N.")
Threads = typer.Option(None, min=1, help=THREADS_HELP)


def use_threads(threads: int | None) -> None:
    """Apply a --threads option."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def load_model_for(model_path: Path, feature_file: FeatureFile, device: str) -> FlowGMMClassifier:
    """Load a model and check that ``feature_file`` holds features it can score (dimension, extractor)."""
    from .estimator import FlowGMMClassifier
    from .features import check_dim

    estimator = FlowGMMClassifier.load(model_path, device=device)
    check_dim(feature_file, estimator.n_features_in_, f"model '{model_path}'")
    trained_on = estimator.header_.get("extractor") or ""
    given = str(feature_file.attrs.get("extractor", "") or "")
    if trained_on and given and trained_on != given:
        raise InputError(
            f"Model '{model_path}' was trained on '{trained_on}' features but '{feature_file.path}' holds '{given}' features; "
            "embed the input with the same extractor."
        )
    shape, given_shape = estimator.image_shape_, feature_file.attrs.get("shape")
    if shape is not None and given_shape is not None and tuple(int(v) for v in given_shape) != shape:
        raise InputError(
            f"Model '{model_path}' reads {'x'.join(map(str, shape))} images but '{feature_file.path}' holds "
            f"{'x'.join(str(int(v)) for v in given_shape)} images; embed them at the model's size (--image-size)."
        )
    return estimator


def row_classes(feature_file: FeatureFile, labels: Optional[Path], classes: list[str], model_path: Path) -> np.ndarray:
    """Each row's class index in ``classes`` (``UNLABELED``, -1, for an unlabeled row).

    Labels come from ``labels`` (CSV id,label) or else the file's own /labels; a label the model
    does not know is an ``InputError``.
    """
    from .features import align_labels, read_labels

    return _class_codes(align_labels(feature_file, read_labels(labels) if labels else None, str(labels)), classes, model_path)


def _class_codes(names: np.ndarray, classes: list[str], model_path: Path) -> np.ndarray:
    """Each name's index in ``classes`` ('' → ``UNLABELED``); a name the model does not know is an ``InputError``."""
    unknown = sorted(set(names[names != ""]) - set(classes))
    if unknown:
        raise InputError(f"Label '{unknown[0]}' is not a class of model '{model_path}' (classes: {', '.join(classes)}).")
    index = {name: k for k, name in enumerate(classes)}
    return np.array([index.get(name, UNLABELED) for name in names], dtype=np.int64)


def labeled_names(stream: FeatureStream, labels: Optional[Path], allow_missing: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The labeled rows of a feature file (ascending row numbers) and their class names, read id
    chunk by id chunk without loading the features.

    Labels come from ``labels`` (CSV id,label) or else the file's /labels; ids of ``labels`` that the
    file lacks are an error unless ``allow_missing`` (``None``: the command has no --allow-missing).
    """
    from .features import read_labels, report_missing_ids
    from .stores import stream_labeled_rows

    if labels is None and not stream.has_labels:
        raise InputError(f"Feature file '{stream.path}' has no /labels; pass --labels LABELS.csv (columns id,label).")
    table = read_labels(labels) if labels else None
    mapping = None if table is None else dict(zip(table["id"].astype(str), table["label"].astype(str)))
    rows, names, missing = stream_labeled_rows(stream, mapping)
    if missing:
        report_missing_ids(len(missing), missing[0], str(labels), stream.path, allow_missing)
    return rows, names


def labeled_classes(stream: FeatureStream, labels: Optional[Path], classes: list[str], model_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The labeled rows of a feature file (ascending) and their class indices in ``classes``.

    A label the model does not know, or a file with no labeled row, is an ``InputError``.
    """
    rows, names = labeled_names(stream, labels)
    codes = _class_codes(names, classes, model_path)
    if not len(rows):
        raise InputError(f"No labeled rows in '{stream.path}'; pass --labels.")
    return rows, codes
