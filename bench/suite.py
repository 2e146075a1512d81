"""The validation suite: `flowgmm benchmark` on every case the team has, FlowGMM against the best baselines.

    python bench/suite.py prepare                      # every case's files under /work/flowgmm-data
    python bench/suite.py run --seeds 4 --json         # the test table: one JSON line per case
    python bench/suite.py run --split validation       # the same on validation rows (for choosing defaults)
    python bench/suite.py run --split validation --methods flowgmm --set consistency_weight=1
    python bench/suite.py run --split validation --methods flowgmm --set members=1   # without the seed ensemble
    python bench/suite.py run --split validation --methods flowgmm --cases letter --classes 5   # letter's first 5 classes
    python bench/suite.py run --split validation --methods flowgmm --cases mnist --labels-per-class 5   # 5 labels of each class
    python bench/suite.py run --cases mnist --seeds 2 --skip 2   # draws 2 and 3 (another process runs 0 and 1)

Cases, with the label counts of BENCHMARKS.md and 10 per class for the two tables:

| case | rows | labels |
| --- | --- | --- |
| two-moons | 1,000 pool / 1,000 test points, 2-D | 10 |
| digits | scikit-learn, 1,297 pool / 500 test, 64 pixels | 50 |
| ag-news | MiniLM features of the AG News test split, 5,600 pool / 2,000 test, 384-D | 200 |
| mnist | pixels as vectors, first 10,000 training images / the 10,000 test images, 784-D | 100 |
| letter | UCI letter, 16 integer columns, 26 classes, 15,000 pool / 5,000 test | 10 per class (260) |
| htru2 | UCI HTRU2 pulsars, 8 heavy-tailed columns in mixed units, 9% positives, 13,898 pool / 4,000 test | 10 per class (20) |

The tables are split once (stratified, seed 0) and embedded with `flowgmm embed --model tabular`, as
a user would. ``--split test`` scores on the test files with the labeled draws of seeds 0..N-1;
``--split validation`` never reads the test files: it holds out a stratified fifth of each pool
(seed 1000) as the rows to score and draws the labels from the rest with seeds 1000.. . Defaults
are chosen on validation, and reported on test.

Each output line has ``case``, ``flowgmm``, ``best_labeled_only`` (kNN, logistic regression, MLP),
``best_semi_supervised`` (label spreading kNN and RBF, Π-model), the two margins, FlowGMM's
median test ``ece`` and its median ``seconds`` per fit, and every method's median.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
LABELED_ONLY = ("knn", "logistic-regression", "mlp")
SEMI_SUPERVISED = ("label-spreading-knn", "label-spreading-rbf", "pi-model")
#: case → (folder under --data, pool file, test file, labels drawn, whether they count per class rather than in all)
CASES = {
    "two-moons": ("two-moons", "features.h5", "test.h5", 10, False),
    "digits": ("digits", "features.h5", "test.h5", 50, False),
    "ag-news": ("ag_news", "pool.h5", "test.h5", 200, False),
    "mnist": ("mnist", "features.h5", "test.h5", 100, False),
    "letter": ("letter", "pool.h5", "test.h5", 10, True),
    "htru2": ("htru2", "pool.h5", "test.h5", 10, True),
}
#: table → (CSV under shared/data/tabular, label column, test rows)
TABLES = {"letter": ("letter.csv", "class", 5000), "htru2": ("htru2.csv", "Anomaly", 4000)}
VALIDATION_SEED = 1000


def _flowgmm(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "flowgmm_cli", *map(str, args)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def prepare_table(name: str, data: Path) -> None:
    """Split one UCI table (stratified, seed 0) into pool and test CSVs and embed each with the tabular extractor."""
    csv, label, test_rows = TABLES[name]
    folder = data / name
    folder.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(SHARED / "tabular" / csv)
    table = table.drop(columns=[table.columns[0]])  # the file's own row numbers
    table.insert(0, "id", [f"{name}{i}" for i in range(len(table))])
    table = table.rename(columns={label: "label"})
    pool, test = train_test_split(table, test_size=test_rows, stratify=table["label"], random_state=0)
    for part, rows in (("pool", pool), ("test", test)):
        rows.to_csv(folder / f"{part}.csv", index=False)
        if not (folder / f"{part}.h5").exists():
            _flowgmm("embed", "--model", "tabular", folder / f"{part}.csv", "--label-column", "label", "-o", folder / f"{part}.h5", "-q")


def prepare(data: Path) -> None:
    if not SHARED.exists():
        raise SystemExit(f"{SHARED} is not here; the suite needs shared/data (MNIST, AG News, the UCI tables).")
    for case in ("two-moons", "digits", "mnist"):
        if not (data / CASES[case][0] / "features.h5").exists():
            subprocess.run([sys.executable, str(ROOT / "bench" / "make_features.py"), case, "--out", str(data)], check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    if not (data / "ag_news" / "pool.h5").exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "ag_news.py"), "prepare", str(data / "ag_news")], check=True)
    for name in TABLES:
        prepare_table(name, data)


def _labels_of(features, path: Path) -> np.ndarray:
    """Each row's label: the file's /labels, or else the labels CSV beside ``path``."""
    if features.labels is not None:
        return features.labels
    return pd.read_csv(_labels_csv(path), dtype=str).set_index("id").loc[features.ids, "label"].to_numpy()


def validation_files(pool: Path, scratch: Path) -> tuple[Path, Path, Path, Path]:
    """A stratified fifth of ``pool`` (seed 1000) as the scored rows, the rest as the pool; written to ``scratch``."""
    from flowgmm_cli.features import FeatureWriter, read_features

    features = read_features(pool)
    ids, names = features.ids, _labels_of(features, pool)
    rest, held = train_test_split(np.arange(len(ids)), test_size=0.2, stratify=names, random_state=VALIDATION_SEED)
    paths = []
    for part, rows in (("pool", np.sort(rest)), ("validation", np.sort(held))):
        with FeatureWriter(scratch / f"{part}.h5", features.dim, dict(features.attrs)) as writer:
            writer.append(ids[rows], features.features[rows])
        pd.DataFrame({"id": ids[rows], "label": names[rows]}).to_csv(scratch / f"{part}_labels.csv", index=False)
        paths += [scratch / f"{part}.h5", scratch / f"{part}_labels.csv"]
    return paths[0], paths[1], paths[2], paths[3]


def load_case(case: str, data: Path, split: str):
    """One case's pool and scored rows (``benchmark.BenchmarkData``) for ``split``, and its label count."""
    from flowgmm_cli import benchmark

    folder, pool_name, test_name, n_labeled, per_class = CASES[case]
    pool, test = data / folder / pool_name, data / folder / test_name
    if split == "validation":
        scratch = data / folder / "validation"
        scratch.mkdir(exist_ok=True)
        pool, pool_labels, test, test_labels = validation_files(pool, scratch)
    else:
        pool_labels, test_labels = _labels_csv(pool), _labels_csv(test)
    return benchmark.load_benchmark_data(pool, pool_labels, test, test_labels), n_labeled, per_class


def first_classes(loaded, n_labeled: int, per_class: bool, n_classes: int):
    """The case restricted to its first ``n_classes`` classes (pool and scored rows), with the label
    count scaled to them where it counts all classes: a case with fewer classes, for rules that
    depend on the number of classes."""
    if not 2 <= n_classes <= len(loaded.classes):
        raise SystemExit(f"--classes must be between 2 and the case's {len(loaded.classes)} classes.")
    pool, scored = loaded.y < n_classes, loaded.y_test < n_classes
    restricted = replace(loaded, X=loaded.X[pool], y=loaded.y[pool], X_test=loaded.X_test[scored], y_test=loaded.y_test[scored], classes=loaded.classes[:n_classes])
    return restricted, n_labeled if per_class else round(n_labeled * n_classes / len(loaded.classes))


def run_case(
    case: str, data: Path, seeds: int, split: str, methods: str, options: dict, skip: int = 0, n_classes: int | None = None, labels_per_class: int | None = None,
) -> dict:  # fmt: skip
    """``flowgmm benchmark``'s run (the same functions, in this process, one thread) on one case;
    ``options`` are FlowGMM options that differ from the defaults (for choosing them on validation);
    ``labels_per_class`` replaces the case's label count (the same number of each class)."""
    from flowgmm_cli import benchmark

    loaded, n_labeled, per_class = load_case(case, data, split)
    if n_classes is not None:
        loaded, n_labeled = first_classes(loaded, n_labeled, per_class, n_classes)
    if labels_per_class is not None:
        n_labeled, per_class = labels_per_class, True
    chosen = {name: method for name, method in benchmark.default_methods("cpu", loaded.units).items() if name in benchmark.select_methods(methods)}
    if "flowgmm" in chosen:
        chosen["flowgmm"] = benchmark.FlowGMMMethod(options=options, units=loaded.units)
    with benchmark.limited_threads(1):
        report = benchmark.run_benchmark(loaded, chosen, n_labeled, seeds, first_seed=(VALIDATION_SEED if split == "validation" else 0) + skip, per_class=per_class)
    medians = {row["method"]: row["median"] for row in report["results"]}
    flowgmm = next((row for row in report["results"] if row["method"] == "flowgmm"), {})
    line = {"case": case, "split": split, "classes": len(loaded.classes), "labels": n_labeled * len(loaded.classes) if per_class else n_labeled, "options": options, "flowgmm": flowgmm.get("median"), "ece": flowgmm.get("ece"), "seconds": flowgmm.get("seconds")}
    for group, names in (("best_labeled_only", LABELED_ONLY), ("best_semi_supervised", SEMI_SUPERVISED)):
        present = [medians[name] for name in names if name in medians]
        if present:
            line[group] = max(present)
            if flowgmm:
                line[f"margin_{group.removeprefix('best_')}"] = round(flowgmm["median"] - max(present), 2)
    line["medians"] = medians
    line["runs"] = flowgmm.get("runs")
    line["ece_runs"] = flowgmm.get("ece_runs")
    return line


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a label count)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_option(text: str) -> tuple[str, object]:
    """``name=value`` with the value read as JSON where it parses (numbers, true/false), else a string."""
    name, _, value = text.partition("=")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _labels_csv(features: Path) -> Path | None:
    """The labels CSV written beside a feature file without /labels, or ``None``."""
    candidate = features.with_name("labels.csv" if features.name == "features.h5" else f"{features.stem}_labels.csv")
    return candidate if candidate.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["prepare", "run"])
    parser.add_argument("--data", type=Path, default=Path("/work/flowgmm-data"))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--skip", type=int, default=0, help="skip the first SKIP draws (to split the seeds between processes)")
    parser.add_argument("--classes", type=int, help="only the first CLASSES classes of each case (labels scaled to them)")
    parser.add_argument("--labels-per-class", type=positive_int, help="this many labels of each class instead of the case's count")
    parser.add_argument("--split", choices=["test", "validation"], default="test")
    parser.add_argument("--methods", default="all", help="as flowgmm benchmark --methods")
    parser.add_argument("--json", action="store_true", help="one JSON line per case (else a table at the end)")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="a FlowGMM option, e.g. consistency_weight=1 (repeatable)")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.data)
        return
    lines = []
    for case in args.cases:
        lines.append(run_case(case, args.data, args.seeds, args.split, args.methods, dict(parse_option(text) for text in args.set), args.skip, args.classes, args.labels_per_class))
        if args.json:
            print(json.dumps(lines[-1]), flush=True)
    if not args.json:
        print(f"{'case':<11}{'FlowGMM':>9}{'labeled-only':>14}{'margin':>8}{'semi-sup.':>11}{'margin':>8}{'ECE':>7}{'s/fit':>7}")
        for line in lines:
            cells = [line.get(key) for key in ("flowgmm", "best_labeled_only", "margin_labeled_only", "best_semi_supervised", "margin_semi_supervised", "ece", "seconds")]
            text = ["-" if value is None else f"{value:.1f}" if i < 5 else f"{value:.3f}" if i == 5 else f"{value:.0f}" for i, value in enumerate(cells)]
            print(f"{line['case']:<11}" + "".join(f"{t:>{w}}" for t, w in zip(text, (9, 14, 8, 11, 8, 7, 7))))


if __name__ == "__main__":
    main()
