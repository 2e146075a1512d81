"""The ``flowgmm`` command line: a thin layer over the library with Unix manners.

Results go to stdout or the ``-o`` file, messages to stderr. Exit codes: 0 success, 2 bad usage or
bad input, 1 any other failure, 130 interrupted. The command modules import torch, scikit-learn,
pandas and h5py inside the commands that use them, so that ``--help`` answers at once (a test
checks it).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import click
import numpy as np
import typer

from . import cli_analysis, cli_benchmark  # noqa: F401  (they register their commands on app)
from ._version import __version__
from .atomic import check_output_path
from .cli_common import QUIET_HELP, THREADS_HELP, Device, Quiet, Threads, app, labeled_names, load_model_for, use_threads
from .cli_options import flag, with_train_options
from .errors import InputError, OptionError, TrainingDiverged
from .options import Panel, TrainOptions
from .progress import RowProgress, stderr_console

if TYPE_CHECKING:
    from .stores import FeatureStream


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
    resume: bool = typer.Option(False, help="Continue an interrupted embed from OUTPUT.partial (OUTPUT.partial.rank* with --nproc)."),
    nproc: int = typer.Option(
        1, min=1,
        help="Processes on this machine (started through torchrun), each embedding every Nth chunk, on its own GPU "
        "(cuda:0 to N-1) or its share of the CPUs; the progress shows process 0's share. --resume needs the same N.",
    ),  # fmt: skip
    threads: Optional[int] = Threads,
    quiet: bool = Quiet,
) -> Optional[int]:
    """Turn texts, images or a table into an HDF5 feature file (/features, /ids, optional /labels)."""
    import os
    import time

    import torch

    from extractors import EmbedRequest, get_extractor
    from extractors.streaming import ProcessFailed

    from . import distributed
    from .devices import require_gpus, resolve_device
    from .features import check_resume_world, partial_world_sizes

    if on_error not in ("fail", "skip"):
        raise InputError(f"--on-error must be 'fail' or 'skip', not '{on_error}'.")
    extractor = get_extractor(model)
    check_output_path(output)
    here = distributed.world()
    if nproc > 1 and here.distributed:
        raise InputError(f"--nproc starts its own processes, but this one is already one of {here.size} (torchrun); leave --nproc out.")
    processes = nproc if nproc > 1 else here.size
    if processes > 1 and not getattr(extractor, "distributed", False):
        raise InputError(f"--model {model} does not split its work over processes; run it as one process, without --nproc or torchrun.")
    if processes > 1 and source == "-":
        raise InputError("Standard input cannot be embedded by several processes; save it to a file and give its path.")
    if processes > 1 and not Path(source).exists():  # the processes would each say so, and --nproc exit with 1
        raise InputError(f"Input '{source}' does not exist.")
    if resume:
        check_resume_world(output, processes)
        if processes > 1 and not partial_world_sizes(output):
            raise OptionError("resume", f"{{option}} found no partial files of '{output}'; run without {{option}}.")
    resolved = resolve_device(device)
    require_gpus(resolved, processes, nproc if nproc > 1 else here.local_rank + 1)
    if nproc > 1:
        # torchrun would give each process one thread (and say so); give each its share of the cores instead
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        argv = sys.argv[1:]
        at = next((i for i, arg in enumerate(argv) if arg == "--nproc" or arg.startswith("--nproc=")), None)
        if at is not None:  # each process gets the same arguments but --nproc
            del argv[at : at + (1 if "=" in argv[at] else 2)]
        return distributed.launch(nproc, argv)
    use_threads(threads)
    here, resolved = distributed.setup(resolved)
    options = {
        "checkpoint": checkpoint, "text_column": text_column, "path_column": path_column,
        "labels_from_folders": labels_from_folders, "pooling": pooling, "max_length": max_length, "batch_size": batch_size,
        "device": resolved, "half": half, "workers": workers, "on_error": on_error, "image_size": image_size,
        "grayscale": grayscale, "array_key": array_key, "label_key": label_key, "encoding": encoding, "chunk_size": chunk_size,
    }  # fmt: skip
    console = stderr_console(quiet or not here.is_main)  # one process speaks for all
    request = EmbedRequest(source, output, id_column, label_column, options, resume=resume, console=console,
                           progress=lambda total: RowProgress(console, "embed", total), rank=here.rank,
                           world_size=here.size)  # fmt: skip
    try:
        rows = extractor.embed(request)
    except ProcessFailed as failure:  # the failed process has said why
        print(f"Error: process {here.rank} of {here.size} stopped: {failure}.", file=sys.stderr)
        time.sleep(5)  # torchrun stops this process meanwhile, and names the one that failed first, not this one
        raise typer.Exit(1) from None
    if here.is_main:
        console.print(f"wrote {rows} rows to {output}")
    if here.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return None


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
    stream: Optional[bool] = typer.Option(
        None, "--stream/--no-stream", show_default="auto: stream when the features need more than the memory available",
        help="Read the features chunk by chunk while training (memory bounded) instead of all at once.", rich_help_panel=_RUNTIME,
    ),
    nproc: int = typer.Option(
        1, min=1, help="Processes on this machine (started through torchrun), each training on its share of the unlabeled rows, "
        "gradients averaged; as 'torchrun --nproc-per-node N -m flowgmm_cli train ...'.", rich_help_panel=_RUNTIME,
    ),
    threads: Optional[int] = typer.Option(
        None, min=1, help=THREADS_HELP + " With 2 or more on the CPU, the calibration fits run in a second process beside the model's fit, each with half the threads.",
        rich_help_panel=_RUNTIME,
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP, rich_help_panel=_RUNTIME),
    options: TrainOptions = TrainOptions(),
) -> Optional[int]:
    """Fit FlowGMM on labeled and unlabeled rows by their exact joint likelihood (paper, equation 4)."""
    import torch

    from . import distributed
    from .devices import require_gpus, resolve_device
    from .estimator import FlowGMMClassifier, member_checkpoint
    from .features import align_labels, check_dim, read_features, read_labels
    from .progress import TrainingProgress
    from .stores import ArrayStore, FeatureStream
    from .targets import require_classes

    if val_labels is not None and val is None:
        raise InputError("--val-labels needs --val FEATURES.h5, the validation rows it labels.")
    if val is not None and options.val_fraction:
        raise InputError("--val and --val-fraction both choose the best epoch; give one of them.")
    check_output_path(output)
    here = distributed.world()
    require_gpus(resolve_device(options.device), max(nproc, here.size), nproc if nproc > 1 else here.local_rank + 1)
    if nproc > 1:
        if here.distributed:
            raise InputError(f"--nproc starts its own processes, but this one is already one of {here.size} (torchrun); leave --nproc out.")
        return distributed.launch(nproc, _without_option(sys.argv[1:], "--nproc"))
    use_threads(threads)
    console = stderr_console(quiet or not here.is_main)  # one process speaks for all
    streamed = FeatureStream(features)
    if stream is None:
        stream = _needs_streaming(streamed, console)
    if stream:
        labeled, names = labeled_names(streamed, labels, allow_missing)
    else:
        feature_file = read_features(features)
        if labels is None and feature_file.labels is None:
            raise InputError(f"Feature file '{features}' has no /labels; pass --labels LABELS.csv (columns id,label).")
        all_names = align_labels(feature_file, read_labels(labels) if labels else None, str(labels), allow_missing)
        rows, labeled = feature_file.features, np.flatnonzero(all_names != "")
        names = all_names[labeled]
    require_classes(sorted(set(names)), f"labels file '{labels}'" if labels else f"the /labels of '{features}'")
    X_val = y_val = None
    if val is not None:
        val_file = read_features(val)
        check_dim(val_file, streamed.dim, f"training features '{features}'")
        val_names = align_labels(val_file, read_labels(val_labels) if val_labels else None, str(val_labels))
        keep = val_names != ""
        if not keep.any():
            raise InputError(f"Validation file '{val}' has no labeled rows; pass --val-labels.")
        X_val, y_val = val_file.features[keep], val_names[keep]
    estimator = FlowGMMClassifier(**{name: value for name, value in vars(options).items()})
    checkpoint = output.with_name(output.name + ".ckpt")
    if resume and not checkpoint.exists():
        raise InputError(f"--resume found no checkpoint '{checkpoint}'; train without --resume.")
    fingerprint = _fingerprint(streamed, labeled, names, options, X_val, y_val)
    store = streamed if stream else ArrayStore(torch.from_numpy(rows), chunks=4 * here.size if here.distributed else 1, units=streamed.units, image_shape=streamed.image_shape)
    with TrainingProgress(console) as progress:
        estimator.fit_rows(store, labeled, names.astype(object), X_val=X_val, y_val=y_val, checkpoint=checkpoint, resume=resume,
                           fingerprint=fingerprint, callback=progress)  # fmt: skip
    if not here.is_main:
        return None
    estimator.save(
        output,
        extractor=streamed.attrs.get("extractor", ""),
        extractor_model=streamed.attrs.get("model", ""),
        features_file=str(features),
    )
    for member in range(estimator.options_.members):
        member_checkpoint(checkpoint, member).unlink(missing_ok=True)
    last, members = estimator.history_[-1], estimator.options_.members
    summary = f"wrote {output}: {len(estimator.classes_)} classes, {estimator.options_.epochs} epochs"
    summary += f" × {members} members, last loss {last['loss']:.3f}/dim" if members > 1 else f", loss {last['loss']:.3f}/dim"
    if last.get("val_accuracy") is not None:
        best = max(estimator.history_, key=lambda h: (h["val_accuracy"], -h["val_nll"]))
        summary += f", best epoch {best['epoch']}" + (f" of member {best['member'] + 1}" if members > 1 else "") + f" (val acc {best['val_accuracy']:.3f})"
    if estimator.projection_choice_:
        chosen = estimator.options_.projection_dim
        summary += f", flow on the top {chosen} principal directions ({describe_projection_choice(estimator.projection_choice_, chosen)})"
    evidence = estimator.calibration_
    if evidence is not None and evidence["source"] == "validation rows":
        summary += f", temperature {estimator.temperature_:.3g} from {describe_evidence(evidence)}"
    elif evidence is not None:
        fits = estimator.options_.calibration_folds * members
        summary += f", temperature {estimator.temperature_:.3g} from {fits} calibration fits ({describe_evidence(evidence)})"
    console.print(summary)


def describe_projection_choice(choice: dict, chosen: int) -> str:
    """Why the projection has ``chosen`` directions, in words: ``chosen of 32/64 by held-out NLL
    0.89/0.82, within one standard error (0.08) of the lowest``."""
    sizes, nll, errors = choice["sizes"], choice["held_out_nll"], choice["standard_error"]
    text = f"chosen of {'/'.join(map(str, sizes))} by held-out NLL {'/'.join(f'{value:.2f}' for value in nll)}"
    index = sizes.index(chosen) if chosen in sizes else None
    if index is not None and nll[index] > min(nll):
        text += f", the fewest within one standard error ({errors[index]:.2f}) of the lowest"
    return text


def describe_evidence(evidence: dict) -> str:
    """The rows a temperature was fitted on, in words: ``50 held-out labels, 82% ± 5 right``
    (a file calibrated by an older ``calibrate`` has only their number)."""
    rows = f"{evidence.get('n')} " + ("held-out labels" if evidence.get("source") == "calibration fits" else "validation rows")
    if "accuracy" not in evidence:
        return rows
    return f"{rows}, {100 * evidence['accuracy']:.0f}% ± {100 * evidence.get('standard_error', 0.0):.0f} right"


def _fingerprint(
    stream: FeatureStream, labeled: np.ndarray, names: np.ndarray, options: TrainOptions, X_val: Optional[np.ndarray], y_val: Optional[np.ndarray]
) -> str:
    """A hash of the data (the feature file's size and modification time, the labeled rows) and the
    options, so --resume refuses a checkpoint from another run."""
    digest = hashlib.sha256(json.dumps([str(stream.path.resolve()), *stream.signature]).encode())
    digest.update(np.ascontiguousarray(labeled).tobytes())
    digest.update(json.dumps([str(v) for v in names]).encode())
    digest.update(json.dumps(options.to_dict(), sort_keys=True).encode())
    if X_val is not None:
        digest.update(np.ascontiguousarray(X_val).tobytes())
        digest.update(json.dumps([str(v) for v in y_val]).encode())
    return digest.hexdigest()


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``NAME VALUE`` or ``NAME=VALUE`` (what each launched process must not see)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


def _needs_streaming(stream: FeatureStream, console) -> bool:
    """Stream when holding the features (as float32, about three copies while training starts and
    one more in the calibration fits' process) needs more than the memory available; say which on stderr."""
    needed = 4 * 4 * stream.n_rows * stream.dim
    available = _available_memory()
    choice = needed > available
    console.print(
        f"features: {stream.n_rows} x {stream.dim} ({needed / 4 / 2**30:.2f} GiB as float32), {available / 2**30:.1f} GiB memory available: "
        + ("streaming from the file in chunks (--no-stream to load it)" if choice else "in memory (--stream to read in chunks)")
    )
    return choice


def _available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux's MemAvailable, else free physical pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# -------------------------------------------------------------------------------- predict
@app.command()
def predict(
    model: Path = typer.Argument(..., help="Model file from 'flowgmm train'."),
    features: Path = typer.Argument(..., help="Feature file (HDF5) to classify."),
    output: str = typer.Option(..., "--output", "-o", help="Predictions CSV, or - for standard output."),
    device: str = Device,
    quiet: bool = Quiet,
) -> None:
    """Write id,label,confidence,p_<class>...,log_px for every row, in the feature file's order.

    The file is read and predicted in blocks, so memory stays bounded for any number of rows.
    """
    from .predictions import write_predictions
    from .stores import FeatureStream

    if output != "-":
        check_output_path(output)
    stream = FeatureStream(features)
    estimator = load_model_for(model, stream, device)
    rows = write_predictions(estimator, stream, output)
    if output != "-":
        stderr_console(quiet).print(f"wrote {rows} predictions to {output}")


@app.command()
def info(
    model: Path = typer.Argument(..., help="Model file."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole header as JSON."),
) -> None:
    """Show what a model file holds: classes, features, the model's parts, training options and history."""
    from .modelfile import read_header

    header = read_header(model)
    if as_json:
        typer.echo(json.dumps(header, indent=2))
        return
    typer.echo(describe_header(header, str(model)))


def describe_header(header: dict, name: str) -> str:
    """``flowgmm info``'s text for a model header."""
    members, history = header.get("members") or [{}], header.get("history", [])
    spec = members[0]
    flow, prior = spec.get("flow", {}), spec.get("prior", {})
    transforms = spec.get("transform", {})
    parts = transforms.get("transforms", [transforms])
    projection = next((part["k"] for part in parts if part.get("type") == "projection"), None)
    defaults = TrainOptions().to_dict()
    evidence = header.get("calibration")
    changed = {key: value for key, value in header.get("options", {}).items() if not _same(value, defaults.get(key))}
    lines = [
        f"model        {name}",
        f"format       flowgmm v{header.get('format_version')} (written by flowgmm {header.get('flowgmm_version', '?')})",
        f"classes      {', '.join(map(str, header.get('classes', [])))}",
        f"features     {header.get('feature_dim')}-d from extractor '{header.get('extractor') or '?'}'"
        + (", square-rooted" if any(part.get("type") == "square_root" for part in parts) else "")
        + (f", flow on the top {projection} principal directions" if projection else "")
        + (f" ({describe_projection_choice(header['projection_choice'], projection)})" if header.get("projection_choice") else ""),
        f"flow         {_flow_summary(flow)}" + (f"; a seed ensemble of {len(members)}, probabilities averaged" if len(members) > 1 else ""),
        f"mixture      {_means_summary(prior)}, variance {prior.get('variance')}, temperature {header.get('temperature')}"
        + (f" ({describe_evidence(evidence)})" if evidence else ""),
        f"rows         {header.get('n_labeled')} labeled, {header.get('n_unlabeled')} unlabeled",
        f"options      {json.dumps(changed) if changed else 'defaults'}",
        f"resolved     {json.dumps(header.get('resolved', {}))}",
    ]
    if history:
        epochs = sum(epoch.get("member", 0) == history[-1].get("member", 0) for epoch in history)
        lines.append(f"final loss   {history[-1]['loss']:.4f} nats/dim after {epochs} epochs" + (" (the last member)" if len(members) > 1 else ""))
    return "\n".join(lines)


def _same(value: object, default: object) -> bool:
    """Equal and of the same kind: 0 is not the default ``False``, nor ``None``."""
    return value == default and isinstance(value, bool) == isinstance(default, bool) and (value is None) == (default is None)


def _flow_summary(flow: dict) -> str:
    if flow.get("type") == "multiscale-realnvp":
        return (
            f"multiscale-realnvp on {'x'.join(map(str, flow.get('shape', [])))} images: {flow.get('scales')} scales, "
            f"{flow.get('couplings')} couplings per group, s/t networks of {flow.get('hidden')} channels x {flow.get('blocks')} residual blocks"
        )
    return f"{flow.get('type')}: {flow.get('coupling_layers')} couplings, hidden {flow.get('hidden')} x {flow.get('hidden_layers')}"


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
