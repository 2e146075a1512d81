"""The ``benchmark`` command: FlowGMM against the paper's baselines on the same splits (issue 6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from . import benchmark
from .cli_common import Device, Quiet, app
from .progress import RunProgress, stderr_console

__all__ = ["benchmark_command"]


@app.command("benchmark")
def benchmark_command(
    features: Path = typer.Argument(..., help="Feature file (HDF5) of the pool: labeled and unlabeled rows."),
    labels: Optional[Path] = typer.Option(None, help="CSV id,label of the pool (else its /labels); the labeled draw comes from these rows."),
    test: Path = typer.Option(..., help="Feature file (HDF5) of the test rows."),
    test_labels: Optional[Path] = typer.Option(None, help="CSV id,label of every test row (else the test file's /labels)."),
    n_labeled: int = typer.Option(..., min=1, help="Labeled rows per seed, drawn stratified from the pool's labeled rows; the rest of the pool is unlabeled."),
    per_class: bool = typer.Option(False, "--per-class", help="--n-labeled rows of each class instead of in all (for imbalanced classes: a rare class gets as many)."),
    seeds: int = typer.Option(4, min=1, help="Seeds 0..N-1 (from --first-seed): one labeled draw and one fit of every method each."),
    first_seed: int = typer.Option(0, min=0, help="The first seed: draws of other seeds than a reported table's, for choosing settings."),
    methods: str = typer.Option("all", help=f"'all' or a comma-separated subset of: {', '.join(benchmark.TITLES)}."),
    standardize: Optional[bool] = typer.Option(
        None, show_default="on for tables (units per column), else off",
        help="Give the baselines features scaled with the pool's mean and std, as FlowGMM scales them inside its model. "
        "Without it they get the features as they are (better on pixels and embeddings).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    device: str = Device,
    threads: int = typer.Option(
        1, min=1, help="Threads for torch, BLAS and OpenMP. The benchmark's networks are small: more threads rarely help, "
        "and on a busy machine they slow every method down (the Π-model 10x with 2 threads on 2 shared cores).",
    ),
    quiet: bool = Quiet,
) -> None:
    """FlowGMM against kNN, logistic regression, an MLP, label spreading and a Π-model on the same splits (the paper's Table 1)."""
    from .devices import resolve_device

    names = benchmark.select_methods(methods)
    data = benchmark.load_benchmark_data(features, labels, test, test_labels)
    standardize = benchmark.default_standardize(data.units) if standardize is None else standardize
    # standardised pixels are no longer pixel values: FlowGMM then takes them as vectors
    available = benchmark.default_methods(str(resolve_device(device)), data.units, None if standardize else data.image_shape)
    chosen = {name: available[name] for name in names}
    console = stderr_console(quiet)
    with benchmark.limited_threads(threads), RunProgress(console, len(chosen) * seeds) as progress:
        report = benchmark.run_benchmark(data, chosen, n_labeled, seeds, on_run=progress, standardize=standardize, first_seed=first_seed, per_class=per_class)
    typer.echo(json.dumps(report) if as_json else benchmark.format_table(report, len(data.classes)))
