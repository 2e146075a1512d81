"""Streaming embed: chunked writing, resume after an interruption, and third-party extractors."""

from __future__ import annotations

import json
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
from flowgmm_cli.features import FeatureWriter


def contents(path: Path) -> tuple:
    with h5py.File(path) as handle:
        attrs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in handle.attrs.items() if k != "created"}
        labels = handle["labels"][...].tolist() if "labels" in handle else None
        return handle["features"][...], handle["ids"][...].tolist(), labels, attrs


def interrupt_after(monkeypatch, target, name: str, calls: int) -> None:
    """Make ``target.name`` raise KeyboardInterrupt on call number ``calls + 1``."""
    original, seen = getattr(target, name), []

    def wrapped(*args, **kwargs):
        seen.append(1)
        if len(seen) > calls:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)


def test_text_embed_resumes_to_the_same_file(tmp_path, capsys, monkeypatch):
    text = pytest.importorskip("extractors.text")
    texts = [f"Headline number {i} about {'markets' if i % 3 else 'football'} " + "word " * (i % 7) for i in range(23)]
    source = tmp_path / "t.csv"
    pd.DataFrame({"id": [f"r{i}" for i in range(23)], "text": texts, "label": [str(i % 2) for i in range(23)]}).to_csv(source, index=False)
    args = ["embed", source, "--model", "minilm", "--label-column", "label", "--chunk-size", "5", "--batch-size", "2"]
    code, _, err = run_cli([*args, "-o", tmp_path / "whole.h5"], capsys)
    assert code == 0, err

    out = tmp_path / "resumed.h5"
    with monkeypatch.context() as patch:
        interrupt_after(patch, text.TextEncoder, "encode_counting_truncated", 2)
        code, _, err = run_cli([*args, "-o", out], capsys)
    assert code == 130 and "--resume" in err
    assert not out.exists()
    with h5py.File(out.with_name(out.name + ".partial")) as handle:
        assert handle.attrs["rows_complete"] == 10 and handle["features"].shape[0] == 10
    code, _, err = run_cli([*args, "-o", out, "--max-length", "64", "--resume"], capsys)
    assert code == 2 and "another input or with other options" in err
    code, _, err = run_cli([*args, "-o", out, "--resume"], capsys)
    assert code == 0, err
    assert "resuming after 10 inputs" in err
    assert not out.with_name(out.name + ".partial").exists()
    whole, resumed = contents(tmp_path / "whole.h5"), contents(out)
    np.testing.assert_array_equal(whole[0], resumed[0])
    assert whole[1:] == resumed[1:]


def test_pixels_resume_with_skipped_images_keeps_every_skip(tmp_path, capsys, monkeypatch):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(9):
        if i in (1, 7):
            (folder / f"{i}.png").write_bytes(b"broken")
        else:
            Image.fromarray(np.full((4, 4), i * 20, np.uint8)).save(folder / f"{i}.png")
    args = ["embed", folder, "--model", "pixels", "--chunk-size", "3", "--on-error", "skip"]
    assert run_cli([*args, "-o", tmp_path / "whole.h5"], capsys)[0] == 0
    out = tmp_path / "resumed.h5"
    with monkeypatch.context() as patch:
        interrupt_after(patch, FeatureWriter, "append", 2)  # two chunks of 3 inputs, one skip among them
        code, _, _ = run_cli([*args, "-o", out], capsys)
    assert code == 130 and not out.exists()
    code, _, err = run_cli([*args, "-o", out, "--resume"], capsys)
    assert code == 0, err
    whole, resumed = contents(tmp_path / "whole.h5"), contents(out)
    np.testing.assert_array_equal(whole[0], resumed[0])
    assert whole[1:] == resumed[1:]
    assert resumed[3]["skipped_ids"] == '["1", "7"]'


def test_writer_refuses_a_damaged_or_foreign_partial(tmp_path):
    out = tmp_path / "f.h5"
    out.with_name("f.h5.partial").write_bytes(b"garbage")
    with pytest.raises(InputError, match="damaged"):
        with FeatureWriter(out, 2, {}, resume_key="k", resume=True):
            pass
    with pytest.raises(RuntimeError):
        with FeatureWriter(out, 2, {}, resume_key="k") as writer:
            writer.append(["a"], np.zeros((1, 2)))
            raise RuntimeError("crash")
    assert not out.exists() and out.with_name("f.h5.partial").exists()
    with pytest.raises(InputError, match="another input"):
        with FeatureWriter(out, 2, {}, resume_key="other", resume=True):
            pass


def test_peak_memory_does_not_hold_all_rows(tmp_path):
    """Writing 200 chunks of 1,000 x 64 floats (51 MB) through the writer keeps Python's heap small."""
    import tracemalloc

    tracemalloc.start()
    chunk = np.ones((1000, 64), np.float32)
    with FeatureWriter(tmp_path / "big.h5", 64, {}, resume_key="k") as writer:
        for i in range(200):
            writer.append([f"{i}-{j}" for j in range(1000)], chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10e6, f"peak {peak / 1e6:.1f} MB"
    assert h5py.File(tmp_path / "big.h5")["features"].shape == (200_000, 64)


PLUGIN = '''
"""A tiny third-party extractor: the length of each text as its one feature."""
import pandas as pd
from flowgmm_cli.features import FeatureWriter


class LengthExtractor:
    name = "textlength"
    description = "characters per text"
    dim = 1

    def weights_status(self):
        return "none needed"

    def embed(self, request):
        table = pd.read_csv(request.source, dtype=str, keep_default_na=False)
        with FeatureWriter(request.output, 1, {"extractor": self.name}) as writer:
            writer.append(table["id"], table["text"].str.len().to_numpy()[:, None])
        return len(table)
'''


def test_third_party_extractor_from_an_entry_point(tmp_path):
    site = tmp_path / "site"
    (site / "lengthplugin-1.0.dist-info").mkdir(parents=True)
    (site / "lengthplugin.py").write_text(textwrap.dedent(PLUGIN))
    (site / "lengthplugin-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: lengthplugin\nVersion: 1.0\n")
    (site / "lengthplugin-1.0.dist-info" / "entry_points.txt").write_text("[flowgmm.extractors]\ntextlength = lengthplugin:LengthExtractor\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).resolve().parents[1])])}

    def flowgmm(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowgmm_cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=120)

    listed = flowgmm("extractors", "--json")
    assert listed.returncode == 0, listed.stderr
    assert any(row["name"] == "textlength" and row["dim"] == 1 for row in json.loads(listed.stdout)["extractors"])
    (tmp_path / "t.csv").write_text("id,text\na,hello\nb,hi\n")
    done = flowgmm("embed", tmp_path / "t.csv", "--model", "textlength", "-o", tmp_path / "f.h5")
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "f.h5") as handle:
        assert handle["features"][:, 0].tolist() == [5.0, 2.0]
    unknown = flowgmm("embed", tmp_path / "t.csv", "--model", "nosuch", "-o", tmp_path / "g.h5")
    assert unknown.returncode == 2 and "textlength" in unknown.stderr


def test_written_files_get_the_usual_permissions(tmp_path):
    """Temporary files are private (0600); the finished file must not stay so."""
    with FeatureWriter(tmp_path / "f.h5", 1, {}) as writer:
        writer.append(["a"], np.zeros((1, 1)))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.h5").stat().st_mode & 0o777 == 0o666 & ~umask
