"""Errors the command line turns into exit codes, and the one place where reading a file turns
low-level failures into a sentence about the file.

- :class:`InputError`: bad usage or bad input, one sentence naming the file, row or column and
  the fix (exit 2).
- :class:`OptionError`: an :class:`InputError` about one option; the library names the parameter
  (``val_fraction``), the command line its flag (``--val-fraction``).
- :class:`TrainingDiverged`: a NaN or infinite loss; nothing was written (exit 1).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

__all__ = ["InputError", "OptionError", "TrainingDiverged", "reading"]


class InputError(ValueError):
    """Bad usage or bad input: one sentence naming the file, row or column and the fix (exit 2)."""


class OptionError(InputError):
    """A bad value for one option. ``message`` says ``{option}`` where the option's name belongs.

    Example:
        >>> error = OptionError("val_fraction", "lower {option} or label more rows.")
        >>> str(error), error.render("--val-fraction")
        ('lower val_fraction or label more rows.', 'lower --val-fraction or label more rows.')
    """

    def __init__(self, option: str, message: str) -> None:
        self.option, self.template = option, message
        super().__init__(message.replace("{option}", option))

    def render(self, name: str) -> str:
        """The message with the option called ``name`` (a command-line flag)."""
        return self.template.replace("{option}", name)


class TrainingDiverged(RuntimeError):
    """Training produced a NaN or infinite loss; nothing was written (exit 1)."""


#: Failures of a file's content that the readers below may raise while parsing.
_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, UnicodeDecodeError, EOFError)


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str, fix: str) -> Iterator[None]:
    """Turn any failure of reading ``path`` into one :class:`InputError` sentence.

    ``what`` names the file's role ("feature file"), ``fix`` says what to do. An
    :class:`InputError` raised inside passes through unchanged. Every reader of user files goes
    through this, so a damaged, truncated or foreign file gives exit 2 and one line, never a
    traceback.

    Example:
        >>> with reading("x.h5", "feature file", "embed it again"):
        ...     raise OSError("Unable to synchronously open file (truncated file: eof = 96)")
        Traceback (most recent call last):
        ...
        flowgmm_cli.errors.InputError: Cannot read feature file 'x.h5' (unable to synchronously open file: truncated file: eof = 96); embed it again.
    """
    try:
        yield
    except InputError:
        raise
    except _READ_ERRORS as error:
        raise InputError(f"Cannot read {what} '{path}' ({describe(error)}); {fix}.") from None


def describe(error: BaseException) -> str:
    """A library's error message as a clause: one line, no trailing punctuation, first letter lower case.

    Example:
        >>> describe(ValueError("Error tokenizing data. C error: Expected 3 fields in line 4, saw 4\\n"))
        'error tokenizing data: C error: Expected 3 fields in line 4, saw 4'
    """
    text = " ".join(str(error).split())
    if not text:
        return type(error).__name__
    text = re.sub(r"\s*\(([^()]*)\)$", r": \1", text)  # "open file (truncated file)" -> "open file: truncated file"
    text = re.sub(r"\.\s+(?=[A-Z])", ": ", text, count=1).rstrip(" .;:")
    first = text.split(" ", 1)[0]
    if first[:1].isupper() and first[1:] == first[1:].lower():  # "Unable" -> "unable"; "HDF5", "ValueError" stay
        text = text[:1].lower() + text[1:]
    return text

