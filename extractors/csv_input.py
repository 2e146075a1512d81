"""CSV inputs of ``embed``, read in chunks with the checks every extractor needs.

A file or ``-`` (standard input) is parsed with quoted multi-line fields, in any encoding Python
knows. Each chunk comes with its row ids (the id column, or row numbers from 0), and the reader
refuses, with one sentence naming the row, a missing column, an undecodable row or a repeated id.
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from flowgmm_cli.errors import InputError, describe

__all__ = ["CsvChunk", "CsvSource", "file_sha256"]

# Undecodable bytes reach us as lone surrogates (Python's "surrogateescape" error handler).
_UNDECODABLE = re.compile("[\udc80-\udcff]")


@dataclass
class CsvChunk:
    """Consecutive data rows of a CSV: ``start`` is the number of data rows before them."""

    start: int
    ids: np.ndarray
    frame: pd.DataFrame
    labels: np.ndarray | None


class _HashingReader(io.RawIOBase):
    """A binary stream that hashes what is read through it, so stdin is hashed while it streams."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner, self.digest = inner, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CsvSource:
    """A CSV file, or standard input for ``-``, to read once in chunks of ``chunk_rows`` rows.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
        >>> _ = path.write_text('id,text\\na,"two\\nlines"\\nb,one\\n')
        >>> [list(c.ids) for c in CsvSource(str(path)).chunks({"text": "--text-column"}, "id")]
        [['a', 'b']]
    """

    def __init__(self, source: str, encoding: str = "utf-8", chunk_rows: int = 1024) -> None:
        self.source, self.encoding, self.chunk_rows = source, encoding, chunk_rows
        self.label = "<stdin>" if source == "-" else source
        self._stdin: _HashingReader | None = None
        self._file_digest: str | None = None
        if source != "-" and not Path(source).is_file():
            raise InputError(f"Input CSV '{source}' does not exist.")
        try:
            "".encode(encoding)
        except LookupError:
            raise InputError(f"Unknown --encoding '{encoding}'; use a Python codec name such as utf-8 or latin-1.") from None

    @property
    def seekable(self) -> bool:
        """Whether the input can be read again (a file), which ``--resume`` needs."""
        return self.source != "-"

    def sha256(self) -> str:
        """SHA-256 of the input's bytes (for standard input: of what has been read so far)."""
        if self._stdin is not None:
            return self._stdin.digest.hexdigest()
        if self._file_digest is None:  # read the file once, however often it is asked
            self._file_digest = file_sha256(Path(self.source))
        return self._file_digest

    def _open(self) -> IO[bytes]:
        if self.source == "-":
            self._stdin = _HashingReader(sys.stdin.buffer)
            return io.BufferedReader(self._stdin)
        return Path(self.source).open("rb")

    def chunks(self, required: dict[str, str], id_column: str, label_column: str | None = None) -> Iterator[CsvChunk]:
        """Yield the rows in order.

        ``required`` maps each column that must exist to the option that named it, for the error;
        the label column, if given, must exist too.
        """
        with self._open() as stream:
            # dtype=object keeps each field a Python str: pandas' pyarrow-backed strings (its default
            # where pyarrow is installed) cannot hold the lone surrogates of undecodable bytes.
            reader = self._parse(lambda: pd.read_csv(
                stream, dtype=object, keep_default_na=False, chunksize=self.chunk_rows, encoding=self.encoding,
                encoding_errors="surrogateescape",
            ))  # fmt: skip
            seen: set[str] = set()
            start = 0
            while (frame := self._parse(lambda: next(reader, None))) is not None:
                if start == 0:
                    self._check_columns(frame, {**required, **({label_column: "--label-column"} if label_column else {})})
                ids = (
                    frame[id_column].to_numpy(dtype=object)
                    if id_column in frame.columns
                    else np.arange(start, start + len(frame)).astype(str).astype(object)
                )
                self._check_decoded(frame, ids, start)
                self._check_unique(ids, seen)
                labels = frame[label_column].to_numpy(dtype=object) if label_column else None
                yield CsvChunk(start, ids, frame, labels)
                start += len(frame)
            if start == 0:
                raise InputError(f"CSV '{self.label}' has a header but no data rows.")

    def _parse(self, step):
        try:
            return step()
        except pd.errors.EmptyDataError:
            raise InputError(f"CSV '{self.label}' is empty; it needs a header row and at least one data row.") from None
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
            raise InputError(f"CSV '{self.label}' could not be parsed ({describe(error)}); fix those rows or pass the right --encoding.") from None

    def _check_columns(self, frame: pd.DataFrame, required: dict[str, str]) -> None:
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise InputError(
                f"CSV '{self.label}' has no column '{missing[0]}' (columns: {', '.join(map(str, frame.columns))}); "
                f"name the right one with {required[missing[0]]}."
            )

    def _check_decoded(self, frame: pd.DataFrame, ids: np.ndarray, start: int) -> None:
        bad = frame.apply(lambda column: column.str.contains(_UNDECODABLE)).to_numpy().any(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"Data row {start + row + 1} (id '{_printable(ids[row])}') of CSV '{self.label}' is not valid "
                f"{self.encoding}; fix the file or pass the right --encoding."
            )

    def _check_unique(self, ids: np.ndarray, seen: set[str]) -> None:
        for value in ids:
            if value in seen:
                raise InputError(f"Id '{value}' appears more than once in CSV '{self.label}'; ids must be unique.")
            seen.add(value)


def _printable(text: str) -> str:
    return _UNDECODABLE.sub("?", str(text))
