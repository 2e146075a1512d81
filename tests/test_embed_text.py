"""Text extractors: MiniLM features match a plain transformers loop, in input order; CSV robustness."""

from __future__ import annotations

import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from flowgmm_testutils import run_cli

transformers = pytest.importorskip("transformers")
text = pytest.importorskip("extractors.text")

# Lengths from one word to a few hundred tokens, in no particular order, so sorting reorders them.
TEXTS = [
    "Stocks rallied on Friday after the central bank held rates.",
    "Goal!",
    " ".join(["The probe sent back images of the rings of Saturn and its moons."] * 30),
    "A new chip promises faster phones.",
    "",
    "Rain delayed the final match; the champion will play again tomorrow at noon in the main stadium.",
    " ".join(["Markets"] * 3),
    "Scientists sequence the genome of a rare orchid found only in the mountains of Borneo.",
]


@pytest.fixture(scope="module")
def minilm() -> tuple:
    path = text.minilm_path()
    return transformers.AutoTokenizer.from_pretrained(path), transformers.AutoModel.from_pretrained(path).eval()


def plain_mean_pooling(tokenizer, model, texts: list[str], max_length: int) -> np.ndarray:
    """The reference: one text at a time, in order, mean of the last hidden state over its tokens."""
    rows = []
    with torch.inference_mode():
        for one in texts:
            batch = tokenizer([one], truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state[0]
            rows.append(hidden.mean(dim=0).numpy())
    return np.stack(rows)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_minilm_matches_plain_mean_pooling_in_input_order(minilm):
    tokenizer, model = minilm
    encoder = text.TextEncoder(tokenizer, model, pooling="mean", max_length=128, batch_size=3)
    lengths = [len(ids) for ids in tokenizer(TEXTS)["input_ids"]]
    assert not np.all(np.diff(lengths) >= 0), "the texts must not already be sorted by length"
    ours, truncated = encoder.encode_counting_truncated(TEXTS)
    assert truncated == 1  # the long one, over 128 tokens
    reference = plain_mean_pooling(tokenizer, model, TEXTS, 128)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 384)
    assert cosine(ours, reference).min() >= 0.9999
    # a shuffled row order would pair some rows with another text's reference
    assert cosine(ours[::-1], reference).min() < 0.99


def test_truncation_count_without_a_fast_tokenizer(minilm):
    """Slow tokenizers keep no record of what truncation cut; the count comes from a second look."""
    tokenizer, model = minilm
    slow = transformers.BertTokenizer.from_pretrained(text.minilm_path())
    long_text, short_text = TEXTS[2], TEXTS[0]
    exactly = slow.convert_tokens_to_string(slow.tokenize(long_text)[:30])  # 30 tokens + [CLS] + [SEP] = 32
    encoder = text.TextEncoder(slow, model, pooling="mean", max_length=32)
    features, truncated = encoder.encode_counting_truncated([long_text, short_text, exactly])
    assert truncated == 1 and features.shape == (3, 384)


def test_cls_and_pooler_pooling(minilm):
    tokenizer, model = minilm
    with torch.inference_mode():
        batch = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
        output = model(**batch)
    cls = text.TextEncoder(tokenizer, model, pooling="cls").encode(TEXTS[:2])
    pooler = text.TextEncoder(tokenizer, model, pooling="pooler").encode(TEXTS[:2])
    np.testing.assert_allclose(cls, output.last_hidden_state[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(pooler, output.pooler_output.numpy(), atol=1e-5)


def write_texts(path, texts, **columns) -> None:
    pd.DataFrame({"id": [f"t{i}" for i in range(len(texts))], "text": texts, **columns}).to_csv(path, index=False)


def test_embed_minilm_cli_keeps_order_reports_truncation_and_empty_texts(tmp_path, capsys, minilm):
    tokenizer, model = minilm
    source = tmp_path / "texts.csv"
    write_texts(source, TEXTS, label=["a", "b", "", "a", "b", "", "a", "b"])
    code, _, err = run_cli(["embed", "--model", "minilm", source, "-o", tmp_path / "f.h5", "--label-column", "label",
                            "--max-length", "32", "--chunk-size", "3", "--batch-size", "2"], capsys)  # fmt: skip
    assert code == 0, err
    assert "1 of 8 texts were longer than --max-length 32" in err
    assert "1 texts are empty" in err
    with h5py.File(tmp_path / "f.h5") as handle:
        features = handle["features"][...]
        assert [i.decode() for i in handle["ids"][...]] == [f"t{i}" for i in range(8)]
        assert [v.decode() for v in handle["labels"][...]] == ["a", "b", "", "a", "b", "", "a", "b"]
        attrs = dict(handle.attrs)
    assert attrs["extractor"] == "minilm" and attrs["pooling"] == "mean" and attrs["dim"] == 384
    assert attrs["truncated"] == 1 and len(attrs["source_sha256"]) == 64
    reference = plain_mean_pooling(tokenizer, model, TEXTS, 32)
    assert cosine(features, reference).min() >= 0.9999


def test_quoted_multiline_fields_stdin_and_encoding(tmp_path, capsys, monkeypatch, minilm):
    import io

    data = 'id,text\nx,"first line\nsecond line, with a comma"\ny,"caf\xe9 au lait"\n'.encode("latin-1")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, _, err = run_cli(["embed", "--model", "minilm", "-", "-o", tmp_path / "s.h5", "--encoding", "latin-1"], capsys)
    assert code == 0, err
    with h5py.File(tmp_path / "s.h5") as handle:
        assert [i.decode() for i in handle["ids"][...]] == ["x", "y"]
        import hashlib

        assert handle.attrs["source_sha256"] == hashlib.sha256(data).hexdigest()
        features = handle["features"][...]
    tokenizer, model = minilm
    reference = plain_mean_pooling(tokenizer, model, ["first line\nsecond line, with a comma", "caf\xe9 au lait"], 256)
    assert cosine(features, reference).min() >= 0.9999


@pytest.mark.parametrize(
    ("content", "args", "expected"),
    [
        (b"id,body\n1,hello\n", [], "has no column 'text' (columns: id, body); name the right one with --text-column"),
        (b"id,text\n1,hello\n1,again\n", [], "Id '1' appears more than once"),
        (b"id,text\n1,fine\n2,caf\xe9\n", [], "Data row 2 (id '2')"),
        (b"", [], "is empty"),
        (b"id,text\n", [], "no data rows"),
        (b"id,text\n1,x\n", ["--encoding", "klingon"], "Unknown --encoding"),
        (b"id,text\n1,x\n", ["--pooling", "max"], "Unknown --pooling 'max'"),
        (b"id,text\n1,x\n", ["--half"], "--half needs a CUDA device"),
        (b"id,text\n1,x\n", ["--resume"], "found no partial file"),
    ],
    ids=["missing-column", "duplicate-ids", "undecodable", "empty", "header-only", "encoding", "pooling", "half", "resume"],
)
def test_bad_text_inputs_exit_2(tmp_path, capsys, content, args, expected):
    source = tmp_path / "in.csv"
    source.write_bytes(content)
    code, _, err = run_cli(["embed", "--model", "minilm", source, "-o", tmp_path / "out.h5", "--device", "cpu", *args], capsys)
    assert code == 2, err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"id,body\n1,hello\n", "has no column 'text'"), (b"id,text\n1,hello\n1,again\n", "Id '1' appears more than once")],
    ids=["missing-column", "duplicate-ids"],
)
def test_a_bad_csv_is_named_before_missing_weights(tmp_path, capsys, monkeypatch, content, expected):
    """The CSV is checked before the weights are looked for: a user without MiniLM learns first what is wrong with the file."""
    from flowgmm_cli.errors import InputError

    def not_installed() -> str:
        raise InputError("The minilm weights are not installed.")

    monkeypatch.setattr(text, "minilm_path", not_installed)
    source = tmp_path / "in.csv"
    source.write_bytes(content)
    code, _, err = run_cli(["embed", "--model", "minilm", source, "-o", tmp_path / "out.h5", "--device", "cpu"], capsys)
    assert code == 2 and expected in err and "not installed" not in err, err


def test_offline_bert_and_unknown_checkpoint_fail_fast(tmp_path):
    """Without the hub, bert's weights are nowhere: exit 2 naming the offline choices, without waiting
    on the network (the probe below is bounded; the subprocess's time is mostly imports)."""
    from extractors.hub import hub_online

    if hub_online():
        pytest.skip("the model hub is reachable from here, so bert would download")
    source = tmp_path / "in.csv"
    write_texts(source, ["hello"])
    for model_args in (["--model", "bert"], ["--model", "minilm", "--checkpoint", "someone/no-such-model"]):
        done = subprocess.run([sys.executable, "-m", "flowgmm_cli", "embed", source, "-o", tmp_path / "o.h5", *model_args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "--model minilm" in done.stderr and "efficientnet-lite0" in done.stderr and "--checkpoint PATH" in done.stderr


def test_the_hub_probe_gives_up_after_its_timeout_when_the_network_hangs(monkeypatch):
    """A black-holed network (connect never returns) costs the probe's few seconds, not a TCP timeout."""
    import threading

    from extractors import hub

    never = threading.Event()

    def hang(*args, **kwargs):
        never.wait()
        raise OSError("released by the test")

    monkeypatch.setattr(hub.socket, "create_connection", hang)
    monkeypatch.setattr(hub, "_PROBE_SECONDS", 0.2)
    monkeypatch.setattr(hub, "_probe_result", None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.monotonic()
    assert hub.hub_online() is False
    assert time.monotonic() - started < 0.2 + 0.5 + 5  # the join's bound, with room for a loaded machine
    never.set()


def test_checkpoint_folder_and_bad_checkpoint(tmp_path, capsys):
    source = tmp_path / "in.csv"
    write_texts(source, ["one text", "another"])
    code, _, err = run_cli(["embed", "--model", "minilm", "--checkpoint", text.minilm_path(), source, "-o", tmp_path / "o.h5"], capsys)
    assert code == 0, err
    (tmp_path / "weights.bin").write_bytes(b"x")
    code, _, err = run_cli(["embed", "--model", "minilm", "--checkpoint", tmp_path / "weights.bin", source, "-o", tmp_path / "p.h5"], capsys)
    assert code == 2 and "is a file" in err
    empty = tmp_path / "empty-model"
    empty.mkdir()
    code, _, err = run_cli(["embed", "--model", "minilm", "--checkpoint", empty, source, "-o", tmp_path / "p.h5"], capsys)
    assert code == 2 and "Could not load the text model" in err
