"""Commands that analyse a trained model: ``evaluate`` (and, from issue 5, ``calibrate``, ``visualize``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .cli_common import Device, Quiet, app, labeled_rows, load_model_for
from .features import read_features
from .metrics import classification_report

__all__ = ["evaluate"]


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Model file from 'flowgmm train'."),
    features: Path = typer.Argument(..., help="Feature file (HDF5) of test rows."),
    labels: Optional[Path] = typer.Option(None, help="CSV id,label of the test rows (else the file's /labels)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    device: str = Device,
    quiet: bool = Quiet,
) -> None:
    """Accuracy, NLL, ECE (15 bins), n and per-class recall on the labeled rows of FEATURES."""
    feature_file = read_features(features)
    estimator = load_model_for(model, feature_file, device)
    classes = [str(c) for c in estimator.classes_]
    X, y = labeled_rows(feature_file, labels, classes, model)
    report = classification_report(estimator.predict_log_proba(X), y, classes)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"accuracy  {report['accuracy']:.4f}\nnll       {report['nll']:.4f}\nece       {report['ece']:.4f}\nn         {report['n']}")
    for name, recall in report["per_class_recall"].items():
        typer.echo(f"recall[{name}]  {'-' if recall is None else f'{recall:.4f}'}")
