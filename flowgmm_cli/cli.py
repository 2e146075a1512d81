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

from . import __version__, cli_analysis, cli_benchmark  # noqa: F401  (they register their commands on app)
from .atomic import check_output_path
from .cli_common import Device, Quiet, Threads, app, check_dim, load_model_for, use_threads
from .devices import resolve_device
from .errors import InputError, TrainingDiverged
from .features import align_labels, read_features, read_labels
from .modelfile import read_header
from .progress import stderr_console
from .splits import UNLABELED


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
    rows = extractor.embed(EmbedRequest(source, output, id_column, label_column, options, resume=resume, console=console))
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
@app.command(epilog="Options shown as 'auto' are chosen from the data: see README 'Defaults'.")
def train(
    features: Path = typer.Argument(..., help="Feature file (HDF5) with all rows, labeled and unlabeled."),
    output: Path = typer.Option(..., "--output", "-o", help="Model file to write."),
    labels: Optional[Path] = typer.Option(None, help="CSV id,label; without it the file's own /labels are used."),
    allow_missing: bool = typer.Option(False, help="Warn instead of failing on label ids absent from the features."),
    val: Optional[Path] = typer.Option(None, help="Feature file of validation rows to choose the best epoch."),
    val_labels: Optional[Path] = typer.Option(None, help="Labels CSV for --val (else its /labels)."),
    val_fraction: float = typer.Option(0.0, min=0.0, max=0.9, help="Hold out this share of each class's labeled rows to choose the best epoch."),
    epochs: Optional[int] = typer.Option(None, min=1, show_default="auto: about 3,000 steps", help="Passes over the unlabeled rows."),
    seed: int = typer.Option(0, help="Seed of the means, the weights' init, batches and noise."),
    device: str = Device,
    resume: bool = typer.Option(False, help="Continue from OUTPUT.ckpt, the checkpoint an interrupted run left."),
    coupling_layers: Optional[int] = typer.Option(None, min=1, show_default="auto: 10 up to 8 features, else 8", help="Affine coupling layers."),
    hidden: Optional[int] = typer.Option(None, min=1, show_default="auto: 512 up to 8 features, else 2*dim in [128, 512]", help="Width of the s/t networks."),
    hidden_layers: Optional[int] = typer.Option(None, min=1, show_default="auto: 1", help="Hidden layers per s/t network."),
    dropout: float = typer.Option(0.0, min=0.0, max=0.9, help="Dropout inside the s/t networks."),
    actnorm: bool = typer.Option(False, help="ActNorm before each coupling."),
    permutation: str = typer.Option("reverse", help="Between couplings: reverse the features, or a fixed random permutation."),
    means_scale: Optional[float] = typer.Option(None, min=0.0, show_default="auto: closest means 7 std apart", help="Std of the fixed random class means (paper: 1)."),
    variance: Optional[float] = typer.Option(None, min=1e-6, show_default="auto: 1.72", help="Variance of each mixture component."),
    learn_means: bool = typer.Option(False, help="Train the class means with the flow."),
    learn_weights: bool = typer.Option(False, help="Train the mixture weights (class imbalance)."),
    scaling: Optional[str] = typer.Option(None, show_default="auto: shared above 8 features, else feature", help="Divide the centred inputs by each feature's std (feature) or by one scale for all (shared: pixels, embeddings)."),
    projection_dim: Optional[int] = typer.Option(None, min=0, show_default="auto: 32 above 64 features, else off", help="Flow on this many principal directions, the rest as Gaussian noise (0 = all features)."),
    unlabeled_weight: Optional[float] = typer.Option(None, min=0.0, show_default="auto: 1 up to 8 features, else 0.3", help="Weight of the unlabeled NLL in the loss."),
    labeled_noise: Optional[float] = typer.Option(None, min=0.0, show_default="auto: 1.2 x median neighbour distance / sqrt(dim)", help="Std of Gaussian noise on standardised labeled inputs."),
    batch_size: Optional[int] = typer.Option(None, min=1, show_default="auto: 256", help="Unlabeled rows per step."),
    labeled_batch_size: Optional[int] = typer.Option(None, min=1, show_default="auto: 64", help="Labeled rows per step."),
    lr: float = typer.Option(1e-3, min=0.0, help="AdamW learning rate (cosine schedule)."),
    weight_decay: float = typer.Option(1e-4, min=0.0, help="AdamW weight decay."),
    grad_clip: float = typer.Option(10.0, min=0.0, help="Gradient-norm clipping."),
    threads: Optional[int] = Threads,
    quiet: bool = Quiet,
) -> None:
    """Fit FlowGMM on labeled and unlabeled rows by their exact joint likelihood (paper, equation 4)."""
    from .estimator import FlowGMMClassifier
    from .progress import TrainingProgress

    if permutation not in ("reverse", "random"):
        raise InputError(f"--permutation must be 'reverse' or 'random', not '{permutation}'.")
    if val_labels is not None and val is None:
        raise InputError("--val-labels needs --val FEATURES.h5, the validation rows it labels.")
    check_output_path(output)
    use_threads(threads)
    feature_file = read_features(features)
    if labels is None and feature_file.labels is None:
        raise InputError(f"Feature file '{features}' has no /labels; pass --labels LABELS.csv (columns id,label).")
    names = align_labels(feature_file, read_labels(labels) if labels else None, str(labels), allow_missing)
    y = _semi_supervised_targets(names, feature_file.path, labels)
    X_val = y_val = None
    if val is not None:
        val_file = read_features(val)
        check_dim(val_file, feature_file.dim, f"training features '{features}'")
        val_names = align_labels(val_file, read_labels(val_labels) if val_labels else None, str(val_labels))
        keep = val_names != ""
        if not keep.any():
            raise InputError(f"Validation file '{val}' has no labeled rows; pass --val-labels.")
        X_val, y_val = val_file.features[keep], val_names[keep]
    estimator = FlowGMMClassifier(
        coupling_layers=coupling_layers, hidden=hidden, hidden_layers=hidden_layers, dropout=dropout, actnorm=actnorm,
        permutation=permutation, means_scale=means_scale, variance=variance, learn_means=learn_means,
        learn_weights=learn_weights, projection_dim=projection_dim, scaling=scaling, unlabeled_weight=unlabeled_weight, labeled_noise=labeled_noise, epochs=epochs,
        batch_size=batch_size, labeled_batch_size=labeled_batch_size, lr=lr, weight_decay=weight_decay,
        grad_clip=grad_clip, val_fraction=val_fraction if val is None else 0.0, random_state=seed, device=device,
    )  # fmt: skip
    checkpoint = output.with_name(output.name + ".ckpt")
    if resume and not checkpoint.exists():
        raise InputError(f"--resume found no checkpoint '{checkpoint}'; train without --resume.")
    fingerprint = _fingerprint(feature_file.features, y, estimator.get_params(), X_val, y_val)
    console = stderr_console(quiet)
    with TrainingProgress(console) as progress:
        estimator.fit(feature_file.features, y, X_val=X_val, y_val=y_val, checkpoint=checkpoint, resume=resume,
                      fingerprint=fingerprint, callback=progress)  # fmt: skip
    estimator.save(
        output,
        extractor=feature_file.attrs.get("extractor", ""),
        extractor_model=feature_file.attrs.get("model", ""),
        features_file=str(features),
        n_labeled=int(sum(1 for v in y if not _is_unlabeled(v))),
        n_unlabeled=int(sum(1 for v in y if _is_unlabeled(v))),
        history=estimator.history_,
        flowgmm_version=__version__,
    )
    checkpoint.unlink(missing_ok=True)
    last = estimator.history_[-1]
    summary = f"wrote {output}: {len(estimator.classes_)} classes, {estimator.training_options_.epochs} epochs, loss {last['loss']:.3f}/dim"
    if last.get("val_accuracy") is not None:
        best = max(estimator.history_, key=lambda h: (h["val_accuracy"], -h["val_nll"]))
        summary += f", best epoch {best['epoch']} (val acc {best['val_accuracy']:.3f})"
    console.print(summary)


def _is_unlabeled(value: object) -> bool:
    return isinstance(value, int) and value == UNLABELED


def _semi_supervised_targets(names: np.ndarray, features: Path, labels: Optional[Path]) -> np.ndarray:
    """Class names per row with ``-1`` for unlabeled rows, after checking there are two classes."""
    classes = sorted(set(names[names != ""]))
    source = f"labels file '{labels}'" if labels else f"the /labels of '{features}'"
    if len(classes) < 2:
        found = f"only class '{classes[0]}'" if classes else "no labeled rows"
        raise InputError(f"FlowGMM needs labeled rows of at least 2 classes, but {source} has {found}; label more rows.")
    y = names.astype(object)
    y[names == ""] = UNLABELED
    return y


def _fingerprint(X: np.ndarray, y: np.ndarray, params: dict, X_val: Optional[np.ndarray], y_val: Optional[np.ndarray]) -> str:
    """A hash of the data and options, so --resume refuses a checkpoint from another run."""
    digest = hashlib.sha256(np.ascontiguousarray(X).tobytes())
    digest.update(json.dumps([str(v) for v in y]).encode())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
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
    """Show what a model file holds: classes, feature dimension, architecture, training options."""
    header = read_header(model)
    if as_json:
        typer.echo(json.dumps(header, indent=2))
        return
    arch, history = header.get("architecture", {}), header.get("history", [])
    lines = [
        f"model        {model}",
        f"format       flowgmm v{header.get('format_version')} (written by flowgmm {header.get('flowgmm_version', '?')})",
        f"classes      {', '.join(map(str, header.get('classes', [])))}",
        f"features     {header.get('feature_dim')}-d from extractor '{header.get('extractor') or '?'}'",
        f"flow         {arch.get('coupling_layers')} couplings, hidden {arch.get('hidden')} x {arch.get('hidden_layers')}{_projection_summary(arch)}",
        f"mixture      {_means_summary(arch)}, variance {arch.get('variance')}, temperature {header.get('temperature')}",
        f"rows         {header.get('n_labeled')} labeled, {header.get('n_unlabeled')} unlabeled",
        f"training     {json.dumps(header.get('training', {}))}",
    ]
    if history:
        lines.append(f"final loss   {history[-1]['loss']:.4f} nats/dim after {len(history)} epochs")
    typer.echo("\n".join(lines))


def _projection_summary(architecture: dict) -> str:
    projection = architecture.get("projection_dim")
    return f", on the top {projection} principal directions" if projection else ""


def _means_summary(architecture: dict) -> str:
    separation = architecture.get("means_separation")
    if separation is not None:
        return f"closest means {separation} std apart"
    return f"means scale {architecture.get('means_scale')}"


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
    except InputError as error:
        _fail(str(error), 2)
    except TrainingDiverged as error:
        _fail(str(error), 1)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(2 if isinstance(error, click.UsageError) else error.exit_code)
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
