"""errors: reading() turns a failed read into one InputError sentence; describe() makes a library's message a clause."""

from __future__ import annotations

import json

import pytest

from flowgmm_cli.errors import InputError, OptionError, TrainingDiverged, describe, reading

FIX = "export it again"


def _read_error(error: BaseException) -> InputError:
    with pytest.raises(InputError) as caught:
        with reading("data/x.h5", "feature file", FIX):
            raise error
    return caught.value


def _check_sentence(message: str) -> None:
    assert "\n" not in message and "\r" not in message
    assert message.startswith("Cannot read feature file 'data/x.h5' (")
    assert message.endswith(f"); {FIX}.")
    assert message.count("; ") == 1


@pytest.mark.parametrize(
    "error, clause",
    [
        (OSError("Unable to synchronously open file (truncated file: eof = 96)"), "unable to synchronously open file: truncated file: eof = 96"),
        (FileNotFoundError(2, "No such file or directory"), "[Errno 2] No such file or directory"),
        (
            ValueError("Error tokenizing data. C error: Expected 3 fields in line 4, saw 4\n"),
            "error tokenizing data: C error: Expected 3 fields in line 4, saw 4",
        ),
        (KeyError("features"), "'features'"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
        (EOFError("Ran out of input"), "ran out of input"),
        (json.JSONDecodeError("Expecting value", "x", 0), "expecting value: line 1 column 1: char 0"),
    ],
)
def test_reading_turns_read_failures_into_one_input_error_sentence(error, clause):
    message = str(_read_error(error))
    _check_sentence(message)
    assert message == f"Cannot read feature file 'data/x.h5' ({clause}); {FIX}."


def test_the_low_level_error_is_not_chained():
    """``from None``: the command line shows one line, and a traceback would not show the library's frames."""
    error = _read_error(OSError("truncated"))
    assert error.__cause__ is None and error.__suppress_context__


@pytest.mark.parametrize("error", [InputError("Column 'label' is missing; pass --label-column."), OptionError("device", "bad {option}.")])
def test_reading_passes_input_errors_through_unchanged(error):
    with pytest.raises(InputError) as caught:
        with reading("x.csv", "labels file", FIX):
            raise error
    assert caught.value is error


@pytest.mark.parametrize("error", [RuntimeError("a bug"), TypeError("a bug"), TrainingDiverged("nan")])
def test_reading_leaves_other_errors_alone(error):
    """Programming errors are not disguised as bad input."""
    with pytest.raises(type(error)) as caught:
        with reading("x.csv", "labels file", FIX):
            raise error
    assert caught.value is error


def test_reading_without_an_error_runs_the_body():
    ran = []
    with reading("x.csv", "labels file", FIX):
        ran.append(True)
    assert ran == [True]


@pytest.mark.parametrize(
    "message, clause",
    [
        ("Bad file.", "bad file"),
        ("Bad file...", "bad file"),
        ("bad file;", "bad file"),
        ("bad file: ", "bad file"),
        ("  first line\n  second line.\n", "first line second line"),
        ("Error tokenizing data. C error: Expected 3 fields", "error tokenizing data: C error: Expected 3 fields"),
        ("open file (truncated file)", "open file: truncated file"),
        ("open file (truncated file).", "open file (truncated file)"),
    ],
)
def test_describe_gives_one_line_without_trailing_punctuation(message, clause):
    text = describe(ValueError(message))
    assert text == clause
    assert "\n" not in text and not text.endswith((".", ";", ":", " "))


@pytest.mark.parametrize("error, clause", [(OSError("HDF5 file is truncated"), "HDF5 file is truncated"), (EOFError(), "EOFError")])
def test_describe_keeps_the_case_of_acronyms(error, clause):
    assert describe(error) == clause


def test_describe_rewrites_only_the_last_parenthesised_group():
    assert describe(ValueError("block (code 3) is damaged (truncated)")) == "block (code 3) is damaged: truncated"


def test_option_error_names_the_parameter_and_renders_a_flag():
    error = OptionError("val_fraction", "Class 'a' has no row left; lower {option} or label more rows.")
    assert isinstance(error, InputError) and isinstance(error, ValueError)
    assert error.option == "val_fraction"
    assert str(error) == "Class 'a' has no row left; lower val_fraction or label more rows."
    assert error.render("--val-fraction") == "Class 'a' has no row left; lower --val-fraction or label more rows."
