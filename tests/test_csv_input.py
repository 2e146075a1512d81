"""The CSV reader of ``embed``: fields as Python strings, whatever pandas' string storage."""

from __future__ import annotations

import pytest

from extractors.csv_input import CsvSource
from flowgmm_cli.errors import InputError


def test_fields_stay_python_strings_as_written(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,text\n007,1.50\nb,\n")
    (chunk,) = CsvSource(str(path)).chunks({"text": "--text-column"}, "id")
    # object columns of str: no number parsing, and room for the lone surrogates of undecodable
    # bytes, which pandas' pyarrow-backed strings (its default where pyarrow is installed) refuse
    assert list(chunk.frame.dtypes) == [object, object]
    assert list(chunk.ids) == ["007", "b"] and list(chunk.frame["text"]) == ["1.50", ""]


def test_an_undecodable_row_is_named(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"id,text\na,fine\nb,caf\xe9\n")
    with pytest.raises(InputError, match=r"Data row 2 \(id 'b'\) .* is not valid utf-8"):
        list(CsvSource(str(path)).chunks({"text": "--text-column"}, "id"))
