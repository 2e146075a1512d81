"""AG News end to end: embed with MiniLM, train FlowGMM, evaluate; beside the baselines on the same labels.

The AG News test split (7,600 texts, ../shared/data) is split once, stratified with seed 0, into a
5,600-row pool and 2,000 test rows. For each seed, 50 labels per class are drawn from the pool;
the rest of the pool is unlabeled. FlowGMM runs through the command line (``flowgmm train`` then
``flowgmm evaluate --json``); logistic regression and the 3-layer MLP with dropout
(:mod:`flowgmm_cli.baselines`) are fitted on the same labeled rows, features as they are.

    python bench/ag_news.py prepare DIR            # texts.csv, embed, pool/test files in DIR
    python bench/ag_news.py run DIR --seeds 4      # the accuracy table
    python bench/ag_news.py run DIR --nproc 2      # FlowGMM trained by two processes (flowgmm train --nproc 2)
    python bench/ag_news.py ood DIR                # train on three classes, AUROC of log p(x) for the fourth
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowgmm_cli.features import FeatureWriter, read_features  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "ag_news"
POOL, TEST, LABELS_PER_CLASS = 5600, 2000, 50


def prepare(folder: Path) -> None:
    """Write texts.csv, embed it with minilm, and split the features into pool.h5 / test.h5 with label files."""
    folder.mkdir(parents=True, exist_ok=True)
    classes = [line.strip() for line in (SHARED / "classes.txt").read_text().splitlines() if line.strip()]
    table = pd.read_csv(SHARED / "test.csv", header=None, names=["cls", "title", "description"], dtype=str, keep_default_na=False)
    texts = table["title"].str.strip() + ". " + table["description"].str.replace("\\", " ", regex=False).str.strip()
    rows = pd.DataFrame({"id": [f"ag{i}" for i in range(len(table))], "text": texts, "label": [classes[int(c) - 1] for c in table["cls"]]})
    rows.to_csv(folder / "texts.csv", index=False)
    embedded = folder / "all_minilm.h5"
    if not embedded.exists():
        subprocess.run([sys.executable, "-m", "flowgmm_cli", "embed", "--model", "minilm", str(folder / "texts.csv"),
                        "--label-column", "label", "-o", str(embedded)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    features = read_features(embedded)
    pool, test = train_test_split(np.arange(len(features.ids)), train_size=POOL, test_size=TEST, stratify=features.labels, random_state=0)
    for name, rows_ in (("pool", np.sort(pool)), ("test", np.sort(test))):
        with FeatureWriter(folder / f"{name}.h5", features.dim, dict(features.attrs)) as writer:
            writer.append(features.ids[rows_], features.features[rows_])
        pd.DataFrame({"id": features.ids[rows_], "label": features.labels[rows_]}).to_csv(folder / f"{name}_labels.csv", index=False)


def run(folder: Path, seeds: int, threads: int, nproc: int = 1) -> dict:
    """Per seed: FlowGMM through ``flowgmm train`` (in ``nproc`` processes) / ``evaluate``, the
    baselines on the same labeled rows."""
    from flowgmm_cli.baselines import MLP, LogisticRegressionBaseline
    from flowgmm_cli.splits import pick_labeled

    pool, test = read_features(folder / "pool.h5"), read_features(folder / "test.h5")
    pool_names = pd.read_csv(folder / "pool_labels.csv", dtype=str).set_index("id").loc[pool.ids, "label"].to_numpy()
    test_names = pd.read_csv(folder / "test_labels.csv", dtype=str).set_index("id").loc[test.ids, "label"].to_numpy()
    classes = sorted(set(pool_names))
    y_pool, y_test = np.searchsorted(classes, pool_names), np.searchsorted(classes, test_names)
    # the baselines see the features as they are, as in `flowgmm benchmark` (they did better so)
    X_pool, X_test = pool.features, test.features
    torch.set_num_threads(threads)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    baselines = {"logistic-regression": LogisticRegressionBaseline(), "mlp": MLP()}
    scores: dict[str, list[float]] = {"flowgmm": [], **{name: [] for name in baselines}}
    seconds: dict[str, float] = dict.fromkeys(scores, 0.0)
    for seed in range(seeds):
        labeled = np.sort(pick_labeled(y_pool, LABELS_PER_CLASS, seed))
        labels_csv = folder / f"labels_seed{seed}.csv"
        pd.DataFrame({"id": pool.ids[labeled], "label": pool_names[labeled]}).to_csv(labels_csv, index=False)
        model = folder / f"model_seed{seed}.flowgmm"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "flowgmm_cli", "train", str(folder / "pool.h5"), "--labels", str(labels_csv),
                        "-o", str(model), "--seed", str(seed), "--nproc", str(nproc), "-q"], check=True, env=env)  # fmt: skip
        report = subprocess.run([sys.executable, "-m", "flowgmm_cli", "evaluate", str(model), str(folder / "test.h5"),
                                 "--labels", str(folder / "test_labels.csv"), "--json"], check=True, env=env,
                                capture_output=True, text=True)  # fmt: skip
        seconds["flowgmm"] += time.perf_counter() - start
        scores["flowgmm"].append(100 * json.loads(report.stdout)["accuracy"])
        unlabeled = np.setdiff1d(np.arange(len(y_pool)), labeled)
        for name, method in baselines.items():
            start = time.perf_counter()
            predicted = method.fit_predict(X_pool[labeled], y_pool[labeled], X_pool[unlabeled], X_test, seed)
            scores[name].append(100 * float(np.mean(predicted == y_test)))
            seconds[name] += time.perf_counter() - start
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in scores.items()), file=sys.stderr)
    return {name: {"median": statistics.median(v), "runs": v, "seconds_per_run": seconds[name] / seeds} for name, v in scores.items()}


def ood(folder: Path, threads: int) -> dict:
    """For each class: train on the other three (50 labels each, seed 0), then ``evaluate --ood``
    with that class's test rows against the other test rows."""
    from flowgmm_cli.splits import pick_labeled

    pool, test = read_features(folder / "pool.h5"), read_features(folder / "test.h5")
    pool_names = pd.read_csv(folder / "pool_labels.csv", dtype=str).set_index("id").loc[pool.ids, "label"].to_numpy()
    test_names = pd.read_csv(folder / "test_labels.csv", dtype=str).set_index("id").loc[test.ids, "label"].to_numpy()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    work = folder / "ood"
    work.mkdir(exist_ok=True)
    results = {}
    for held_out in sorted(set(pool_names)):
        keep, inside, outside = pool_names != held_out, test_names != held_out, test_names == held_out
        for name, source, rows in (("pool", pool, keep), ("in", test, inside), ("out", test, outside)):
            with FeatureWriter(work / f"{name}.h5", source.dim, dict(source.attrs)) as writer:
                writer.append(source.ids[rows], source.features[rows])
        names = pool_names[keep]
        labeled = pick_labeled(np.searchsorted(sorted(set(names)), names), LABELS_PER_CLASS, 0)
        pd.DataFrame({"id": pool.ids[keep][labeled], "label": names[labeled]}).to_csv(work / "labels.csv", index=False)
        pd.DataFrame({"id": test.ids[inside], "label": test_names[inside]}).to_csv(work / "in_labels.csv", index=False)
        subprocess.run([sys.executable, "-m", "flowgmm_cli", "train", str(work / "pool.h5"), "--labels", str(work / "labels.csv"),
                        "-o", str(work / "model.flowgmm"), "-q"], check=True, env=env)  # fmt: skip
        report = subprocess.run([sys.executable, "-m", "flowgmm_cli", "evaluate", str(work / "model.flowgmm"), str(work / "in.h5"),
                                 "--labels", str(work / "in_labels.csv"), "--ood", str(work / "out.h5"), "--json"],
                                check=True, env=env, capture_output=True, text=True)  # fmt: skip
        parsed = json.loads(report.stdout)
        results[held_out] = {"accuracy_in": parsed["accuracy"], **{k: parsed["ood"][k] for k in ("auroc", "fpr_at_95_tpr")}}
        print(f"held out {held_out}: {results[held_out]}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["prepare", "run", "ood"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nproc", type=int, default=1, help="run: processes that train FlowGMM")
    args = parser.parse_args()
    if not SHARED.exists():
        raise SystemExit(f"{SHARED} is not here; this benchmark needs the AG News test split of shared/data.")
    if args.step == "prepare":
        prepare(args.folder)
    elif args.step == "run":
        print(json.dumps(run(args.folder, args.seeds, args.threads, args.nproc), indent=2))
    else:
        print(json.dumps(ood(args.folder, args.threads), indent=2))


if __name__ == "__main__":
    main()
