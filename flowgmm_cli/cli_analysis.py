"""Commands that analyse a trained model: ``evaluate``, ``calibrate`` and ``visualize`` (paper, section 6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import typer
from rich.console import Console

from .atomic import check_output_path
from .cli_common import Device, Quiet, app, labeled_classes, load_model_for, row_classes
from .errors import InputError
from .progress import stderr_console

if TYPE_CHECKING:
    from .features import FeatureFile

__all__ = ["evaluate", "calibrate", "visualize"]


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Model file from 'flowgmm train'."),
    features: Path = typer.Argument(..., help="Feature file (HDF5) of test rows."),
    labels: Optional[Path] = typer.Option(None, help="CSV id,label of the test rows (else the file's /labels)."),
    ood: Optional[Path] = typer.Option(
        None, "--ood", help="Feature file of out-of-distribution rows: AUROC and FPR at 95% TPR of log p(x) (as predict's log_px), all rows of FEATURES being in-distribution."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    device: str = Device,
    quiet: bool = Quiet,
) -> None:
    """Accuracy, NLL, ECE (15 bins), Brier score, per-class precision/recall/F1 and the confusion matrix
    on the labeled rows of FEATURES; with --ood, how well log p(x) tells FEATURES from another file."""
    from .estimator import log_evidence
    from .features import check_dim
    from .metrics import classification_report, ood_report
    from .stores import FeatureStream, blocks

    stream = FeatureStream(features)
    estimator = load_model_for(model, stream, device)
    ood_stream = FeatureStream(ood) if ood is not None else None
    if ood_stream is not None:
        check_dim(ood_stream, estimator.n_features_in_, f"model '{model}'")
    classes = [str(c) for c in estimator.classes_]
    rows, y = labeled_classes(stream, labels, classes, model)
    joint = np.concatenate([estimator.member_log_joints(x.numpy()) for _, x in blocks(stream, rows)], axis=1)
    report = classification_report(estimator.log_proba_from_joint(joint), y, classes)
    if estimator.image_shape_ is not None:  # a density of pixels: bits per dimension, as image flows report it
        report["bits_per_dim"] = float(-log_evidence(joint).mean() / (estimator.n_features_in_ * np.log(2)))
    if ood_stream is not None:
        log_px = [np.concatenate([estimator.score_samples(x.numpy()) for _, x in blocks(s)]) for s in (stream, ood_stream)]
        report["ood"] = {"file": str(ood), **ood_report(*log_px)}
    typer.echo(json.dumps(report) if as_json else _format_report(report, classes))


def _format_report(report: dict, classes: list[str]) -> str:
    """``evaluate``'s report as aligned text: the scalars, a per-class table, the confusion matrix, OOD."""
    width = max(8, *(len(name) for name in classes)) + 2
    number = lambda value: "-" if value is None else f"{value:.4f}"  # noqa: E731
    lines = [f"{key:<10}{number(report[key])}" for key in ("accuracy", "nll", "ece", "brier")]
    if "bits_per_dim" in report:
        lines.append(f"{'bits/dim':<10}{report['bits_per_dim']:.4f}  (labeled rows, at their pixels' bin centres)")
    lines.append(f"{'n':<10}{report['n']}")
    lines.append("")
    lines.append(f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    for name, scores in report["per_class"].items():
        lines.append(f"{name:<{width}}{number(scores['precision']):>10}{number(scores['recall']):>10}{number(scores['f1']):>10}{scores['support']:>9}")
    lines.append("")
    lines.append("confusion matrix (rows: true class, columns: predicted)")
    cell = max(6, *(len(name) + 1 for name in classes))
    lines.append(" " * width + "".join(f"{name:>{cell}}" for name in classes))
    for name, row in zip(classes, report["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{count:>{cell}}" for count in row))
    if "ood" in report:
        o = report["ood"]
        lines.append("")
        lines.append(f"ood       auroc {o['auroc']:.4f}, fpr at 95% tpr {o['fpr_at_95_tpr']:.4f} ({o['n_in']} rows in, {o['n_out']} out: {o['file']})")
    return "\n".join(lines)


@app.command()
def calibrate(
    model: Path = typer.Argument(..., help="Model file from 'flowgmm train'."),
    features: Path = typer.Argument(..., help="Feature file (HDF5) of labeled validation rows not used in training."),
    labels: Optional[Path] = typer.Option(None, help="CSV id,label of the validation rows (else the file's /labels)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the calibrated model here instead of replacing MODEL."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    device: str = Device,
    quiet: bool = Quiet,
) -> None:
    """Refit the temperature of the class probabilities by minimising the NLL of validation rows (paper, section 6.1).

    'train' already calibrates on folds of its labels; rows it never saw calibrate better. The
    temperature is stored in the model, which 'predict' and 'evaluate' then use for class
    probabilities (log p(x) keeps the trained density); NLL and ECE (15 bins) on the validation
    rows are printed before and after.
    """
    from . import calibration
    from .metrics import classification_report
    from .stores import FeatureStream, blocks
    from .targets import require_classes

    target = check_output_path(output if output is not None else model)
    stream = FeatureStream(features)
    estimator = load_model_for(model, stream, device)
    classes = [str(c) for c in estimator.classes_]
    rows, y = labeled_classes(stream, labels, classes, model)
    X = np.concatenate([x.numpy() for _, x in blocks(stream, rows)])  # labeled rows only: validation labels are few
    source = f"labels file '{labels}'" if labels else f"the /labels of '{features}'"
    require_classes([classes[k] for k in np.unique(y)], source, task="Calibration")
    temperature_before = estimator.temperature_
    before = classification_report(estimator.predict_log_proba(X), y, classes)
    estimator.calibrate(X, estimator.classes_[y])
    after = classification_report(estimator.predict_log_proba(X), y, classes)
    result = {
        "temperature_before": temperature_before,
        "temperature": estimator.temperature_,
        "n": len(y),
        "before": {key: before[key] for key in ("nll", "ece", "accuracy")},
        "after": {key: after[key] for key in ("nll", "ece", "accuracy")},
        "model": str(target),
    }
    estimator.save(target, **{**estimator.header_, "calibration": {**estimator.calibration_, "features_file": str(features), **{k: v for k, v in result.items() if k != "model"}}})
    console = stderr_console(quiet)
    if after["accuracy"] == 1.0:
        _say(console, "Warning: the model classifies every validation row correctly, so a lower NLL only sharpens it; "
                      "calibrate on more validation rows.")  # fmt: skip
    elif np.log(estimator.temperature_) > calibration.LOG_TEMPERATURE_BOUNDS[1] - 1e-3:
        _say(console, "Warning: the temperature reached its upper limit: on these rows the model's class probabilities are no better than uniform.")
    if as_json:
        typer.echo(json.dumps(result))
    else:
        rows = [("temperature", temperature_before, estimator.temperature_)]
        rows += [(key, result["before"][key], result["after"][key]) for key in ("nll", "ece", "accuracy")]
        typer.echo(f"{'':<12}{'before':>10}{'after':>10}\n" + "\n".join(f"{name:<12}{a:>10.4f}{b:>10.4f}" for name, a, b in rows))
        typer.echo(f"{'n':<12}{result['n']:>10}")
    _say(console, f"wrote {target} (temperature {estimator.temperature_:.4g})")


@app.command()
def visualize(
    model: Path = typer.Argument(..., help="Model file from 'flowgmm train'."),
    features: Path = typer.Argument(..., help="Feature file (HDF5) of the rows to draw."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for KIND.png and KIND.csv (created if missing)."),
    labels: Optional[Path] = typer.Option(None, help="CSV id,label (else the file's /labels): marks labeled rows; 'reliability' needs them."),
    kind: list[str] = typer.Option(
        ["all"],
        "--kind",
        "-k",
        help="all (every kind that applies), or any of boundary, latent, samples, distance, reliability, interpolation, means, features (image models); repeat for several.",
    ),
    compare: Optional[Path] = typer.Option(None, help="A second model of the same features, overlaid in 'distance'."),
    pair: Optional[tuple[str, str]] = typer.Option(None, help="Ids of the two rows for 'interpolation' (default: a same-class and a different-class pair)."),
    near: float = typer.Option(5.0, min=0.0, help="'distance' counts the rows with d(x) below this."),
    seed: int = typer.Option(0, help="Seed of the mixture samples and of the subsample of points drawn."),
    sample_temperature: float = typer.Option(1.0, min=0.0, help="Image models' 'samples': scale of the latent noise (1: the model's density; lower: cleaner, less varied)."),
    layer: Optional[int] = typer.Option(None, min=0, help="Image models' 'features': the layer whose activations are perturbed (default: the middle one)."),
    channel: int = typer.Option(0, min=0, help="Image models' 'features': the channel perturbed."),
    device: str = Device,
    quiet: bool = Quiet,
) -> None:
    """Plots of section 6 of the paper as DIR/KIND.png, with the numbers behind each as DIR/KIND.csv."""
    from .features import read_features
    from .visualize import KINDS, Scene, render, unavailable

    asked = list(KINDS) if "all" in kind else list(dict.fromkeys(kind))
    unknown = [k for k in asked if k not in KINDS]
    if unknown:
        raise InputError(f"Unknown plot kind '{unknown[0]}'; choose all or any of {', '.join(KINDS)}.")
    if output.exists() and not output.is_dir():
        raise InputError(f"Output '{output}' exists and is not a folder; choose another -o.")
    feature_file = read_features(features)
    estimator = load_model_for(model, feature_file, device)
    other = load_model_for(compare, feature_file, device) if compare is not None else None
    scene = Scene(
        estimator, feature_file.features, feature_file.ids, row_classes(feature_file, labels, [str(c) for c in estimator.classes_], model),
        name=model.stem, compare=other, compare_name=compare.stem if compare is not None else "",
        pair=_pair_rows(pair, feature_file) if pair and all(pair) else None, near=near, seed=seed,
        sample_temperature=sample_temperature, layer=layer, channel=channel,
    )  # fmt: skip
    console = stderr_console(quiet)
    reasons = {k: unavailable(k, scene) for k in asked}
    if "all" not in kind and any(reasons.values()):
        raise InputError(next(r for r in reasons.values() if r) + ".")
    output.mkdir(parents=True, exist_ok=True)
    for name in asked:
        if reasons[name]:
            _say(console, f"{name}: skipped, {reasons[name]}")
            continue
        _say(console, f"{name}: {render(name, scene, output)} -> {output / (name + '.png')}")


def _say(console: Console, message: str) -> None:
    """One unwrapped line on stderr, brackets in file names printed as they are."""
    console.print(message, soft_wrap=True, markup=False)


def _pair_rows(pair: tuple[str, str], feature_file: FeatureFile) -> tuple[int, int]:
    """Row indices of the two --pair ids."""
    position = {str(row_id): i for i, row_id in enumerate(feature_file.ids)}
    missing = [row_id for row_id in pair if row_id not in position]
    if missing:
        raise InputError(f"--pair id '{missing[0]}' is not in feature file '{feature_file.path}'.")
    return position[pair[0]], position[pair[1]]
