"""The ``flowgmm`` command line: a thin layer over the library with Unix manners.

Results go to stdout or the ``-o`` file, messages to stderr. Exit codes: 0 success, 2 bad usage or
bad input, 1 any other failure, 130 interrupted.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Optional

import click
import numpy as np
import typer

from . import cli_analysis, cli_benchmark  # noqa: F401  (they register their commands on app)
from ._version import __version__
from .atomic import check_output_path
from .cli_common import QUIET_HELP, THREADS_HELP, Device, Quiet, Threads, app, load_model_for, use_threads
from .cli_options import flag, with_train_options
from .devices import resolve_device
from .errors import InputError, OptionError, TrainingDiverged
from .features import align_labels, check_dim, read_features, read_labels
from .modelfile import read_header
from .options import Panel, TrainOptions
from .progress import RowProgress, stderr_console
from .targets import require_classes, targets_from_names


def _version(value: bool) -> None:
    if value:
        typer.echo(f"flowgmm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """FlowGMM: a flow maps features to a Gaussian mixture with one component per class."""


# ---------------------------------------------------------------------------------------- embed
@app.command()
def embed(
    source: str = typer.Argument(..., help="A CSV (- = standard input), a folder of images, a zip of images, or .npy/.npz pixels."),
    output: Path = typer.Option(..., "--output", "-o", help="Feature file (HDF5) to write."),
    model: str = typer.Option("tabular", "--model", "-m", help="Extractor: minilm, bert, efficientnet-lite0, efficientnet, pixels, tabular (see 'flowgmm extractors')."),
    checkpoint: Optional[str] = typer.Option(None, help="Text: a hub id or local model folder. Images: timm:NAME for any timm model."),
    id_column: str = typer.Option("id", help="CSV column of row ids (row numbers from 0 when absent)."),
    label_column: Optional[str] = typer.Option(None, help="CSV column of class names, stored as /labels (empty = unlabeled)."),
    text_column: str = typer.Option("text", help="CSV column of texts (text extractors)."),
    path_column: str = typer.Option("path", help="CSV column of image paths, relative to the CSV's folder."),
    labels_from_folders: bool = typer.Option(False, help="Images: the class is the name of the image's parent folder."),
    pooling: Optional[str] = typer.Option(None, show_default="minilm: mean, bert: pooler", help="Text: cls, mean or pooler."),
    max_length: int = typer.Option(256, min=1, help="Text: tokens per text; longer texts are truncated (and counted)."),
    batch_size: Optional[int] = typer.Option(None, min=1, show_default="text 32, images 64", help="Inputs per forward pass."),
    device: str = Device,
    half: bool = typer.Option(False, help="Half precision on CUDA."),
    workers: Optional[int] = typer.Option(None, min=0, show_default="min(4, CPUs)", help="Images: DataLoader worker processes."),
    on_error: str = typer.Option("fail", help="Images: fail on an unreadable image (naming it) or skip it (listed on stderr and in the file)."),
    image_size: Optional[int] = typer.Option(None, min=1, help="Pixels: resize every image to this square size (default: the first image's size)."),
    grayscale: bool = typer.Option(False, help="Pixels: one grey channel instead of the input's colours."),
    array_key: Optional[str] = typer.Option(None, help="Pixels from .npz: the array of images (e.g. x_test)."),
    label_key: Optional[str] = typer.Option(None, help="Pixels from .npz: the array of labels (e.g. y_test)."),
    encoding: str = typer.Option("utf-8", help="CSV text encoding."),
    chunk_size: int = typer.Option(1024, min=1, help="Inputs per written chunk (the unit of --resume)."),
    resume: bool = typer.Option(False, help="Continue an interrupted embed from OUTPUT.partial."),
    threads: Optional[int] = Threads,
    quiet: bool = Quiet,
) -> None:
    """Turn texts, images or a table into an HDF5 feature file (/features, /ids, optional /labels)."""
    from extractors import EmbedRequest, get_extractor

    if on_error not in ("fail", "skip"):
        raise InputError(f"--on-error must be 'fail' or 'skip', not '{on_error}'.")
    extractor = get_extractor(model)
    check_output_path(output)
    use_threads(threads)
    options = {
        "checkpoint": checkpoint, "text_column": text_column, "path_column": path_column,
        "labels_from_folders": labels_from_folders, "pooling": pooling, "max_length": max_length, "batch_size": batch_size,
        "device": resolve_device(device), "half": half, "workers": workers, "on_error": on_error, "image_size": image_size,
        "grayscale": grayscale, "array_key": array_key, "label_key": label_key, "encoding": encoding, "chunk_size": chunk_size,
    }  # fmt: skip
    console = stderr_console(quiet)
    request = EmbedRequest(source, output, id_column, label_column, options, resume=resume, console=console,
                           progress=lambda total: RowProgress(console, "embed", total))  # fmt: skip
    rows = extractor.embed(request)
    console.print(f"wrote {rows} rows to {output}")


@app.command("extractors")
def list_extractors(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """List the installed extractors: name, feature dimension, where the weights come from."""
    from extractors import available_extractors, get_extractor

    rows = []
    for name in sorted(available_extractors()):
        extractor = get_extractor(name)
        status = extractor.weights_status() if hasattr(extractor, "weights_status") else "unknown"
        rows.append({"name": name, "dim": getattr(extractor, "dim", None), "weights": status,
                     "description": getattr(extractor, "description", "")})  # fmt: skip
    if as_json:
        typer.echo(json.dumps({"extractors": rows}))
        return
    for row in rows:
        dim = "input" if row["dim"] is None else str(row["dim"])
        typer.echo(f"{row['name']:<20}{dim:>6}  {row['description']}\n{'':<28}weights: {row['weights']}")


# ---------------------------------------------------------------------------------------- train
_DATA, _RUNTIME = Panel.data.value, Panel.runtime.value


@app.command(epilog="Options shown as 'auto' are chosen from the data: see README 'Defaults'.")
@with_train_options
def train(
    features: Path = typer.Argument(..., help="Feature file (HDF5) with all rows, labeled and unlabeled."),
    output: Path = typer.Option(..., "--output", "-o", help="Model file to write.", rich_help_panel=_DATA),
    labels: Optional[Path] = typer.Option(None, help="CSV id,label; without it the file's own /labels are used.", rich_help_panel=_DATA),
    allow_missing: bool = typer.Option(False, help="Warn instead of failing on label ids absent from the features.", rich_help_panel=_DATA),
    val: Optional[Path] = typer.Option(None, help="Feature file of validation rows to choose the best epoch.", rich_help_panel=_DATA),
    val_labels: Optional[Path] = typer.Option(None, help="Labels CSV for --val (else its /labels).", rich_help_panel=_DATA),
    resume: bool = typer.Option(False, help="Continue from OUTPUT.ckpt, the checkpoint an interrupted run left.", rich_help_panel=_RUNTIME),
    threads: Optional[int] = typer.Option(None, min=1, help=THREADS_HELP, rich_help_panel=_RUNTIME),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP, rich_help_panel=_RUNTIME),
    options: TrainOptions = TrainOptions(),
) -> None:
    """Fit FlowGMM on labeled and unlabeled rows by their exact joint likelihood (paper, equation 4)."""
    from .estimator import FlowGMMClassifier
    from .progress import TrainingProgress

    if val_labels is not None and val is None:
        raise InputError("--val-labels needs --val FEATURES.h5, the validation rows it labels.")
    if val is not None and options.val_fraction:
        raise InputError("--val and --val-fraction both choose the best epoch; give one of them.")
    check_output_path(output)
    use_threads(threads)
    feature_file = read_features(features)
    if labels is None and feature_file.labels is None:
        raise InputError(f"Feature file '{features}' has no /labels; pass --labels LABELS.csv (columns id,label).")
    names = align_labels(feature_file, read_labels(labels) if labels else None, str(labels), allow_missing)
    require_classes(sorted(set(names[names != ""])), f"labels file '{labels}'" if labels else f"the /labels of '{features}'")
    y = targets_from_names(names)
    X_val = y_val = None
    if val is not None:
        val_file = read_features(val)
        check_dim(val_file, feature_file.dim, f"training features '{features}'")
        val_names = align_labels(val_file, read_labels(val_labels) if val_labels else None, str(val_labels))
        keep = val_names != ""
        if not keep.any():
            raise InputError(f"Validation file '{val}' has no labeled rows; pass --val-labels.")
        X_val, y_val = val_file.features[keep], val_names[keep]
    estimator = FlowGMMClassifier(**{name: value for name, value in vars(options).items()})
    checkpoint = output.with_name(output.name + ".ckpt")
    if resume and not checkpoint.exists():
        raise InputError(f"--resume found no checkpoint '{checkpoint}'; train without --resume.")
    fingerprint = _fingerprint(feature_file.features, y, options, X_val, y_val)
    console = stderr_console(quiet)
    with TrainingProgress(console) as progress:
        estimator.fit(feature_file.features, y, X_val=X_val, y_val=y_val, checkpoint=checkpoint, resume=resume,
                      fingerprint=fingerprint, callback=progress)  # fmt: skip
    estimator.save(
        output,
        extractor=feature_file.attrs.get("extractor", ""),
        extractor_model=feature_file.attrs.get("model", ""),
        features_file=str(features),
    )
    checkpoint.unlink(missing_ok=True)
    last = estimator.history_[-1]
    summary = f"wrote {output}: {len(estimator.classes_)} classes, {estimator.options_.epochs} epochs, loss {last['loss']:.3f}/dim"
    if last.get("val_accuracy") is not None:
        best = max(estimator.history_, key=lambda h: (h["val_accuracy"], -h["val_nll"]))
        summary += f", best epoch {best['epoch']} (val acc {best['val_accuracy']:.3f})"
    console.print(summary)


def _fingerprint(X: np.ndarray, y: np.ndarray, options: TrainOptions, X_val: Optional[np.ndarray], y_val: Optional[np.ndarray]) -> str:
    """A hash of the data and options, so --resume refuses a checkpoint from another run."""
    digest = hashlib.sha256(np.ascontiguousarray(X).tobytes())
    digest.update(json.dumps([str(v) for v in y]).encode())
    digest.update(json.dumps(options.to_dict(), sort_keys=True).encode())
    if X_val is not None:
        digest.update(np.ascontiguousarray(X_val).tobytes())
        digest.update(json.dumps([str(v) for v in y_val]).encode())
    return digest.hexdigest()


# -------------------------------------------------------------------------------- predict
@app.command()
def predict(
    model: Path = typer.Argument(..., help="Model file from 'flowgmm train'."),
    features: Path = typer.Argument(..., help="Feature file (HDF5) to classify."),
    output: str = typer.Option(..., "--output", "-o", help="Predictions CSV, or - for standard output."),
    device: str = Device,
    quiet: bool = Quiet,
) -> None:
    """Write id,label,confidence,p_<class>...,log_px for every row, in the feature file's order."""
    from .predictions import prediction_table, write_table

    if output != "-":
        check_output_path(output)
    feature_file = read_features(features)
    estimator = load_model_for(model, feature_file, device)
    frame = prediction_table(estimator, feature_file.ids, feature_file.features)
    write_table(frame, output)
    if output != "-":
        stderr_console(quiet).print(f"wrote {len(frame)} predictions to {output}")


@app.command()
def info(
    model: Path = typer.Argument(..., help="Model file."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole header as JSON."),
) -> None:
    """Show what a model file holds: classes, features, the model's parts, training options and history."""
    header = read_header(model)
    if as_json:
        typer.echo(json.dumps(header, indent=2))
        return
    typer.echo(describe_header(header, str(model)))


def describe_header(header: dict, name: str) -> str:
    """``flowgmm info``'s text for a model header."""
    spec, history = header.get("model", {}), header.get("history", [])
    flow, prior = spec.get("flow", {}), spec.get("prior", {})
    transforms = spec.get("transform", {})
    parts = transforms.get("transforms", [transforms])
    projection = next((part["k"] for part in parts if part.get("type") == "projection"), None)
    defaults = TrainOptions().to_dict()
    changed = {key: value for key, value in header.get("options", {}).items() if not _same(value, defaults.get(key))}
    lines = [
        f"model        {name}",
        f"format       flowgmm v{header.get('format_version')} (written by flowgmm {header.get('flowgmm_version', '?')})",
        f"classes      {', '.join(map(str, header.get('classes', [])))}",
        f"features     {header.get('feature_dim')}-d from extractor '{header.get('extractor') or '?'}'"
        + (f", flow on the top {projection} principal directions" if projection else ""),
        f"flow         {flow.get('type')}: {flow.get('coupling_layers')} couplings, hidden {flow.get('hidden')} x {flow.get('hidden_layers')}",
        f"mixture      {_means_summary(prior)}, variance {prior.get('variance')}, temperature {header.get('temperature')}",
        f"rows         {header.get('n_labeled')} labeled, {header.get('n_unlabeled')} unlabeled",
        f"options      {json.dumps(changed) if changed else 'defaults'}",
        f"resolved     {json.dumps(header.get('resolved', {}))}",
    ]
    if history:
        lines.append(f"final loss   {history[-1]['loss']:.4f} nats/dim after {len(history)} epochs")
    return "\n".join(lines)


def _same(value: object, default: object) -> bool:
    """Equal and of the same kind: 0 is not the default ``False``, nor ``None``."""
    return value == default and isinstance(value, bool) == isinstance(default, bool) and (value is None) == (default is None)


def _means_summary(prior: dict) -> str:
    separation = prior.get("separation")
    if separation is not None:
        return f"closest means {separation} std apart"
    return f"means scale {prior.get('means_scale')}"


@app.command()
def demo(
    output: Path = typer.Option(Path("flowgmm-demo"), "--output", "-o", help="Folder for predictions and plots (created)."),
    quiet: bool = Quiet,
) -> None:
    """The paper's Figure 2 sets and scikit-learn's digits (pixels, then images through EfficientNet-Lite0), offline."""
    from .demo import run_demo

    if output.exists() and not output.is_dir():
        raise InputError(f"Demo output '{output}' exists and is not a folder; choose another -o.")
    output.mkdir(parents=True, exist_ok=True)
    results = run_demo(output, stderr_console(quiet))
    typer.echo(f"{'data set':<14}{'labels':>7}{'FlowGMM':>10}{'labeled-only':>14}")
    for row in results:
        labeled_only = f"{row['labeled_only']:.3f}" if "labeled_only" in row else "-"
        typer.echo(f"{row['dataset']:<14}{row['n_labeled']:>7}{row['flowgmm']:>10.3f}{labeled_only:>14}")
    typer.echo(f"predictions and plots in {output}/")


def main() -> None:
    """Entry point: run the app and turn errors into one sentence and an exit code."""
    try:
        # Without standalone mode, Click returns the code of a typer.Exit (130 for Ctrl-C).
        code = app(standalone_mode=False)
    except OptionError as error:
        _fail(error.render(flag(error.option)), 2)
    except InputError as error:
        _fail(str(error), 2)
    except TrainingDiverged as error:
        _fail(str(error), 1)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.UsageError as error:
        command = error.ctx.command_path if error.ctx is not None else "flowgmm"
        _fail(f"{error.format_message().rstrip('.')}; see '{command} --help'.", 2)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _fail(_INTERRUPTED, 130)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(1)
    if code == 130:
        _fail(_INTERRUPTED, 130)
    if isinstance(code, int) and code:
        sys.exit(code)


_INTERRUPTED = "Interrupted; no output was written (--resume continues from the last epoch of train or chunk of embed)."


def _fail(message: str, code: int) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(code)
