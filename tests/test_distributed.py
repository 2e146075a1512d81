"""Streaming training from a feature file and training in several processes (gloo on the CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flowgmm_cli.data import Batch, ShuffledSource
from flowgmm_cli.errors import InputError
from flowgmm_cli.estimator import FlowGMMClassifier
from flowgmm_cli.factory import build_model, build_objective, build_schedule, build_source, prepare
from flowgmm_cli.features import FeatureWriter
from flowgmm_cli.options import TrainOptions
from flowgmm_cli.stores import ArrayStore, FeatureStream, SubsetStore, blocks, stream_labeled_rows
from flowgmm_cli.training import train
from flowgmm_testutils import run_cli

OPTIONS = TrainOptions(coupling_layers=2, hidden=16, epochs=2, batch_size=32, labeled_batch_size=8, labeled_noise=0.1, consistency_weight=0.0)


def _blobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return (rng.normal(size=(n, 3)) + 3 * y[:, None]).astype(np.float32), y


def _feature_file(path: Path, X: np.ndarray, y: np.ndarray, labeled: np.ndarray) -> None:
    names = np.where(np.isin(np.arange(len(y)), labeled), np.array(["a", "b"])[y], "")
    with FeatureWriter(path, X.shape[1], {"extractor": "tabular"}, with_labels=True) as writer:
        writer.append([f"r{i}" for i in range(len(X))], X, names)


# ------------------------------------------------------------------------------ streaming
def test_streaming_gives_the_in_memory_model_when_the_file_fits_one_buffer(tmp_path, capsys):
    """9,000 rows in three HDF5 chunks of 4,096: read chunk by chunk, trained to the same weights."""
    X, y = _blobs(9000)
    _feature_file(tmp_path / "f.h5", X, y, np.arange(0, 9000, 300))
    assert len(FeatureStream(tmp_path / "f.h5").chunk_bounds()) == 3
    common = ["train", tmp_path / "f.h5", "--epochs", "2", "--hidden", "16", "--coupling-layers", "2", "-q"]
    assert run_cli([*common, "--stream", "-o", tmp_path / "s.flowgmm"], capsys)[0] == 0
    assert run_cli([*common, "--no-stream", "-o", tmp_path / "m.flowgmm"], capsys)[0] == 0
    streamed, loaded = FlowGMMClassifier.load(tmp_path / "s.flowgmm"), FlowGMMClassifier.load(tmp_path / "m.flowgmm")
    for name, tensor in loaded.model_.state_dict().items():
        torch.testing.assert_close(streamed.model_.state_dict()[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert [h["loss"] for h in streamed.history_] == pytest.approx([h["loss"] for h in loaded.history_], rel=1e-5)


def test_a_source_holds_a_few_chunks_not_the_file():
    """Every chunk is read once an epoch, and a buffer never holds more than ``buffer_chunks`` chunks."""
    X = torch.arange(1000.0).reshape(500, 2)
    store = ArrayStore(X, chunks=10)
    reads: list[tuple[int, int]] = []
    real_read = store.read
    store.read = lambda start, stop: reads.append((start, stop)) or real_read(start, stop)  # type: ignore[method-assign]
    source = ShuffledSource(store, X[:4], torch.tensor([0, 1, 0, 1]), 25, 2, seed=3, buffer_chunks=3)
    seen = torch.cat([batch.x_unlabeled for batch in source.epoch()])
    assert sorted(reads) == store.chunk_bounds()
    assert sorted(seen[:, 0].tolist()) == X[:, 0].tolist()
    assert source.steps_per_epoch == 20 and max(len(rows) for rows, _ in source._buffers(iter([None] * 9))) <= 150


def test_the_chunk_order_depends_on_seed_and_epoch_only():
    X = torch.arange(800.0).reshape(400, 2)
    def first_rows(rank: int, world: int, buffer_chunks: int) -> list[float]:
        source = ShuffledSource(ArrayStore(X, chunks=8), X[:2], torch.tensor([0, 1]), 10, 2, seed=5, rank=rank, world_size=world,
                                buffer_chunks=buffer_chunks)  # fmt: skip
        return sorted(torch.cat([b.x_unlabeled for b in source.epoch()])[:, 0].tolist())
    assert first_rows(0, 1, 2) == first_rows(0, 1, 8) == X[:, 0].tolist()
    shares = first_rows(0, 2, 4), first_rows(1, 2, 4)
    assert not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == X[:, 0].tolist()


def test_streamed_labels_come_from_the_ids_chunk_by_chunk(tmp_path):
    X, y = _blobs(50)
    _feature_file(tmp_path / "f.h5", X, y, np.array([3, 7]))
    stream = FeatureStream(tmp_path / "f.h5")
    rows, names, missing = stream_labeled_rows(stream, {"r7": "b", "r9": "", "nope": "a"})
    assert rows.tolist() == [7] and names.tolist() == ["b"] and missing == ["nope"]
    rows, names, _ = stream_labeled_rows(stream, None)  # the file's own /labels
    assert rows.tolist() == [3, 7] and names.tolist() == list(np.array(["a", "b"])[y[[3, 7]]])
    np.testing.assert_array_equal(stream.read_rows(np.array([7, 3, 7])).numpy(), X[[7, 3, 7]])


def test_blocks_read_spans_and_keep_only_the_rows_asked_for(tmp_path):
    X, y = _blobs(50)
    _feature_file(tmp_path / "f.h5", X, y, np.array([3]))
    stream = FeatureStream(tmp_path / "f.h5")
    every = list(blocks(stream, block_rows=7))
    assert [len(rows) for rows, _ in every] == [7] * 7 + [1]
    np.testing.assert_array_equal(np.concatenate([x.numpy() for _, x in every]), X)
    wanted = np.array([0, 6, 7, 20, 49])
    chosen = list(blocks(stream, wanted, block_rows=7))
    assert [rows.tolist() for rows, _ in chosen] == [[0, 6], [7], [20], [49]]  # blocks without a wanted row are skipped
    np.testing.assert_array_equal(np.concatenate([x.numpy() for _, x in chosen]), X[wanted])


def test_evaluate_and_calibrate_read_in_blocks_and_give_what_one_block_gives(tmp_path, capsys, monkeypatch):
    """A file bigger than a block: labeled rows spread over several blocks, some blocks without any."""
    X, y = _blobs(300)
    _feature_file(tmp_path / "f.h5", X, y, np.r_[0:40, 250:300])
    assert run_cli(["train", tmp_path / "f.h5", "--epochs", "2", "--hidden", "16", "--coupling-layers", "2", "-q", "-o", tmp_path / "m.flowgmm"], capsys)[0] == 0
    evaluate = ["evaluate", tmp_path / "m.flowgmm", tmp_path / "f.h5", "--ood", tmp_path / "f.h5", "--json"]
    calibrate = ["calibrate", tmp_path / "m.flowgmm", tmp_path / "f.h5", "-o", tmp_path / "c.flowgmm", "--json"]
    whole = [run_cli(command, capsys) for command in (evaluate, calibrate)]
    monkeypatch.setattr("flowgmm_cli.stores.BLOCK_ROWS", 64)
    in_blocks = [run_cli(command, capsys) for command in (evaluate, calibrate)]
    for (code, out, err), (code_blocks, out_blocks, _) in zip(whole, in_blocks, strict=True):
        assert code == code_blocks == 0, err
        blocked, single = _flat(json.loads(out_blocks)), _flat(json.loads(out))
        numbers = [key for key, value in single.items() if isinstance(value, float)]
        assert {k: blocked[k] for k in numbers} == pytest.approx({k: single[k] for k in numbers}, rel=1e-12)
        assert {k: v for k, v in blocked.items() if k not in numbers} == {k: v for k, v in single.items() if k not in numbers}
    assert json.loads(whole[0][1])["n"] == 90 and json.loads(whole[0][1])["ood"]["n_out"] == 300


def _flat(report: dict, prefix: str = "") -> dict:
    """A nested JSON report as one level, ``a.b`` keys; lists become numbered keys."""
    items = report.items() if isinstance(report, dict) else enumerate(report)
    flat = {}
    for key, value in items:
        name = f"{prefix}{key}"
        flat.update(_flat(value, name + ".") if isinstance(value, dict | list) else {name: value})
    return flat


def test_a_file_that_changes_while_training_is_refused(tmp_path):
    X, y = _blobs(300)
    _feature_file(tmp_path / "f.h5", X, y, np.arange(10))
    stream = FeatureStream(tmp_path / "f.h5")
    stream.read(0, 10)
    stream.close()
    with h5py.File(tmp_path / "f.h5", "a") as handle:
        handle["features"][0, 0] = 99.0
    os.utime(tmp_path / "f.h5", ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(InputError, match="changed while it was being read"):
        stream.read(0, 10)


def test_nan_rows_in_a_streamed_file_name_the_row(tmp_path):
    X, y = _blobs(300)
    X[123, 1] = np.nan
    _feature_file(tmp_path / "f.h5", X, y, np.arange(10))
    with pytest.raises(InputError, match="row 123 \\(id 'r123'\\)"):
        FeatureStream(tmp_path / "f.h5").read(0, 300)


# ----------------------------------------------------------------------------- processes
def _parts(rank: int, world: int, X: torch.Tensor, labeled: np.ndarray, codes: np.ndarray):
    """One process's model, source, objective and schedule, as the estimator builds them."""
    store = ArrayStore(X, chunks=4)
    transform, options = prepare(store, len(labeled), len(X) - len(labeled), OPTIONS)
    torch.manual_seed(0)
    model = build_model(transform, 2, options)
    keep = np.ones(len(X), dtype=bool)
    keep[labeled] = False
    from flowgmm_cli.distributed import World

    source = build_source(SubsetStore(store, keep), X[labeled], torch.from_numpy(codes), model, options, World(rank, world, rank))
    return model, source, build_objective(model, options), build_schedule(options)


def _problem() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    X, y = _blobs(272)  # 256 unlabeled rows in 4 chunks of 64: each of 2 processes gets 2 chunks, 4 full batches of 32
    labeled = np.arange(0, 272, 17)
    return torch.from_numpy(X), labeled, y[labeled]


def _train_in_a_process(rank: int, world: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        model, source, objective, schedule = _parts(rank, world, *_problem())
        history = train(model, source, objective, schedule)
        if rank == 0:
            torch.save({"state": model.state_dict(), "history": history}, f"{folder}/result.pt")
    finally:
        dist.destroy_process_group()


class _Union:
    """The batches of every process's source, concatenated: what the processes train on together."""

    def __init__(self, sources: list[ShuffledSource]) -> None:
        self.sources, self.steps_per_epoch = sources, sources[0].steps_per_epoch

    def epoch(self):
        for batches in zip(*(source.epoch() for source in self.sources)):
            yield Batch(*(torch.cat([getattr(b, part) for b in batches]) for part in ("x_labeled", "y_labeled", "x_unlabeled")))


def test_two_processes_train_the_model_one_process_trains_on_their_batches_together(tmp_path):
    mp.spawn(_train_in_a_process, args=(2, str(tmp_path)), nprocs=2, join=True)
    result = torch.load(tmp_path / "result.pt", weights_only=True)
    parts = [_parts(rank, 2, *_problem()) for rank in (0, 1)]
    model, _, objective, schedule = parts[0]
    history = train(model, _Union([part[1] for part in parts]), objective, schedule)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(result["state"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert [h["loss"] for h in result["history"]] == pytest.approx([h["loss"] for h in history], rel=1e-4)


def test_resuming_with_another_number_of_processes_is_refused(tmp_path, monkeypatch):
    X, labeled, codes = _problem()
    model, source, objective, schedule = _parts(0, 1, X, labeled, codes)
    train(model, source, objective, schedule, checkpoint=tmp_path / "run.ckpt")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="written by 1 processes but this run has 2"):
        train(*_parts(0, 1, X, labeled, codes), checkpoint=tmp_path / "run.ckpt", resume=True)


def test_nproc_trains_through_torchrun_and_writes_one_model(tmp_path):
    X, y = _blobs(400)
    _feature_file(tmp_path / "f.h5", X, y, np.arange(0, 400, 20))
    done = subprocess.run([sys.executable, "-m", "flowgmm_cli", "train", tmp_path / "f.h5", "-o", tmp_path / "m.flowgmm", "--nproc", "2",
                           "--epochs", "2", "--hidden", "16", "--coupling-layers", "2", "--device", "cpu"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("wrote ") == 1, done.stderr  # rank 0 speaks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "m.flowgmm"]
    model = FlowGMMClassifier.load(tmp_path / "m.flowgmm")
    assert (model.n_labeled_, model.n_unlabeled_, len(model.history_)) == (20, 380, 2)


def test_nproc_on_cuda_is_refused_without_a_gpu_per_process(tmp_path, capsys):
    """One sentence before any process starts, not a CUDA error from the process without a GPU."""
    X, y = _blobs(40)
    _feature_file(tmp_path / "f.h5", X, y, np.arange(0, 40, 4))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    code, _, err = run_cli(["train", tmp_path / "f.h5", "-o", tmp_path / "m.flowgmm", "--nproc", gpus + 1, "--device", "cuda"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert ("need a GPU each" if gpus else "CUDA is not available") in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]


def test_a_killed_process_ends_the_run_with_exit_1_and_no_model(tmp_path):
    X, y = _blobs(20000)
    _feature_file(tmp_path / "f.h5", X, y, np.arange(0, 20000, 100))
    launcher = subprocess.Popen([sys.executable, "-m", "flowgmm_cli", "train", tmp_path / "f.h5", "-o", tmp_path / "m.flowgmm", "--nproc", "2",
                                 "--epochs", "200", "--hidden", "16", "--coupling-layers", "2", "--threads", "1", "--device", "cpu"],
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    workers: list[int] = []
    deadline = time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()]
    assert len(workers) >= 2, "torchrun did not start two processes"
    time.sleep(3)  # let them start training
    os.kill(workers[-1], signal.SIGKILL)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 1, err
    assert "failed" in err and "no output was written" in err
    assert not (tmp_path / "m.flowgmm").exists()


def test_a_labels_csv_with_ids_not_in_a_streamed_file(tmp_path, capsys):
    X, y = _blobs(300)
    _feature_file(tmp_path / "f.h5", X, y, np.array([], dtype=int))
    pd.DataFrame({"id": ["r1", "r2", "ghost"], "label": ["a", "b", "a"]}).to_csv(tmp_path / "l.csv", index=False)
    args = ["train", tmp_path / "f.h5", "--labels", tmp_path / "l.csv", "--stream", "--epochs", "1", "--hidden", "8", "--coupling-layers", "1"]
    code, _, err = run_cli([*args, "-o", tmp_path / "m.flowgmm"], capsys)
    assert code == 2 and "1 ids in labels file" in err and "--allow-missing" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli([*args, "--allow-missing", "-q", "-o", tmp_path / "m.flowgmm"], capsys)
    assert code == 0 and "Warning: 1 ids" in err
