"""Worker processes that run some of a ``fit``'s independent fits (:class:`~flowgmm_cli.fits.Fit`)
while this process runs others, and the channel between them.

A worker is a fresh interpreter (:func:`serve`) that reads one message on its stdin (the rows or
their file, each job's transform, labels and options, and its list of fits), runs the fits one
after another, and writes a message on its stdout as each ends: the model's weights and history,
or the held-out scores of a calibration fit; progress between them, and the exception's type and
message if one fails. Messages are a JSON header and plain arrays (:func:`write_message`): reading
one runs no code, unlike a pickle. A fit seeds itself, so on the same number of threads a worker
computes bit for bit what this process would.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .errors import InputError, TrainingDiverged
from .fits import Fit, FitResult, FoldJob, result_from_message, result_message, run_fit
from .options import TrainOptions
from .stores import ArrayStore, FeatureStream, RowStore
from .transforms import build_transform

__all__ = ["Worker", "write_message", "read_message", "serve"]

#: Exceptions a failed worker's message is raised as here (by name); any other is a RuntimeError.
_KNOWN_ERRORS: dict[str, type[Exception]] = {"InputError": InputError, "OptionError": InputError, "TrainingDiverged": TrainingDiverged}
#: Array types a message may carry (no objects), and the most JSON a message header may hold.
_ARRAY_KINDS = "fiub"
_MAX_HEADER = 1 << 24


class Worker:
    """One worker process running ``fits`` on ``threads`` threads: a thread here sends it the job,
    another reads its messages. :attr:`progress` is its ``(done, total)`` steps so far;
    :meth:`wait` returns the results it sent, by position in ``fits``."""

    def __init__(self, fits: list[Fit], threads: int) -> None:
        self._fits = fits
        self._process = subprocess.Popen(_worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._changed = threading.Condition()
        self.progress: tuple[int, int] = (0, sum(fit.steps for fit in fits))
        self._results: dict[int, FitResult] = {}
        self._error: BaseException | None = None
        self._ended = False
        threading.Thread(target=self._send, args=(threads,), daemon=True).start()
        self._reader = threading.Thread(target=self._receive, daemon=True)
        self._reader.start()

    def _send(self, threads: int) -> None:
        assert self._process.stdin is not None
        try:
            with self._process.stdin as pipe:
                write_message(pipe, *_fits_message(self._fits, threads))
        except OSError:
            self._process.kill()  # the worker is already gone: it ends without results

    def _receive(self) -> None:
        assert self._process.stdout is not None
        try:
            while True:
                header, arrays = read_message(self._process.stdout)
                with self._changed:
                    if header["kind"] == "progress":
                        self.progress = (int(header["done"]), int(header["total"]))
                    elif header["kind"] == "fit":
                        index = int(header["index"])
                        self._results[index] = result_from_message(self._fits[index], header, arrays)
                    else:
                        self._error = _KNOWN_ERRORS.get(header["type"], RuntimeError)(header["message"])
        except Exception:  # noqa: BLE001 - the end of the stream, or a message that cannot be read: nothing more from the worker
            pass
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def raise_error(self) -> None:
        """Raise the worker's exception, if it sent one."""
        if self._error is not None:
            raise self._error

    def wait(self, tick: Callable[[], None]) -> dict[int, FitResult]:
        """The results the worker sent once it ends (all of its fits', unless it died first);
        ``tick`` reports progress meanwhile and raises the worker's exception."""
        with self._changed:
            while not self._ended:
                tick()
                self._changed.wait(_WAIT_TICK)
        if len(self._results) < len(self._fits):
            self._process.kill()  # nothing more is coming: a worker still running would only block on a full pipe
        self._process.wait()
        tick()
        return dict(self._results)

    def exit_description(self) -> str:
        code = self._process.poll()
        return f"exit code {code}" if code is None or code >= 0 else f"signal {-code}"

    def stop(self) -> None:
        """Kill the worker if it still runs, reap it, and close its pipe."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._reader.join()
        assert self._process.stdout is not None
        self._process.stdout.close()


#: Seconds between progress updates while this process waits for a worker.
_WAIT_TICK = 0.25


def _worker_command() -> list[str]:
    """``python -c ...`` that imports this package from where this process imported it (not from
    whatever the working directory holds) and runs :func:`serve`. A fresh interpreter rather than
    ``multiprocessing``: forking after torch has started its threads can hang, and spawning
    re-imports the caller's main script, which an unguarded script cannot survive."""
    root = str(Path(__file__).resolve().parents[1])
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r}); from flowgmm_cli.workers import serve; serve()"]


class _Reporter:
    """The worker's callback: its steps over all its fits, as messages on the channel (every 1% or so)."""

    def __init__(self, channel: IO[bytes], fits: list[Fit]) -> None:
        self._channel, self._fits = channel, fits
        self._index, self._finished = -1, 0
        self._last_sent = 0

    def next_fit(self) -> None:
        """The next fit starts; the one before has run all its steps."""
        if self._index >= 0:
            self._finished += self._fits[self._index].steps
        self._index += 1

    def on_step(self, step: int, total_steps: int) -> None:
        done = self._finished + step
        total = self._finished + total_steps + sum(fit.steps for fit in self._fits[self._index + 1 :])
        if done - self._last_sent >= max(1, total // 100) or step == total_steps:
            write_message(self._channel, {"kind": "progress", "done": done, "total": total})
            self._last_sent = done

    def on_epoch_end(self, report: Any) -> None:
        pass

    def on_phase(self, label: str) -> None:
        pass


def write_message(stream: IO[bytes], header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
    """One message: the byte length of a JSON header, the header (with each array's dtype and
    shape), then the arrays' bytes as they are (no copy). Reading it runs no code, unlike a pickle."""
    arrays = {name: np.ascontiguousarray(value) for name, value in (arrays or {}).items()}
    text = json.dumps({**header, "arrays": {name: [value.dtype.str, list(value.shape)] for name, value in arrays.items()}}).encode()
    stream.write(struct.pack("<Q", len(text)))
    stream.write(text)
    for value in arrays.values():
        if value.size:
            stream.write(value.data)
    stream.flush()


def read_message(stream: IO[bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A message of :func:`write_message`; ``EOFError`` at the end of the stream, ``ValueError``
    for anything that is not such a message."""
    (length,) = struct.unpack("<Q", _read_exactly(stream, 8))
    if length > _MAX_HEADER:
        raise ValueError(f"a message header of {length} bytes is not one of this protocol")
    header = json.loads(bytes(_read_exactly(stream, length)))
    arrays = {}
    for name, (dtype_text, shape) in header.pop("arrays").items():
        dtype = np.dtype(str(dtype_text))
        if dtype.kind not in _ARRAY_KINDS:
            raise ValueError(f"array '{name}' has dtype {dtype}, which a message may not carry")
        arrays[name] = np.frombuffer(_read_exactly(stream, dtype.itemsize * math.prod(shape)), dtype).reshape(shape)
    return header, arrays


def _read_exactly(stream: IO[bytes], size: int) -> bytearray:
    """``size`` bytes of ``stream`` into a writable buffer; ``EOFError`` if it ends first."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        count = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not count:
            raise EOFError("the stream ended within a message")
        got += count
    return buffer


def _fits_message(fits: list[Fit], threads: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``fits``, a thread count and torch's default dtype as a message. Each job (a member's, a
    candidate size's) has one entry: options in the header, its labeled rows, their codes and the
    rows held back as arrays. The rows travel once (unless the worker reads them from their
    file), and each transform once (a seed ensemble's members share theirs): its spec in the
    header, its statistics as arrays; so do the models' validation rows."""
    jobs = _distinct([fit.job for fit in fits])
    transforms = _distinct([job.transform for job in jobs])
    validations = _distinct([fit.validation for fit in fits if fit.validation is not None])
    rows = jobs[0].rows
    if any(job.rows is not rows for job in jobs):
        raise ValueError("a worker's fits must share their rows")
    arrays: dict[str, np.ndarray] = {}
    for number, transform in enumerate(transforms):
        arrays.update({f"transform{number}.{name}": value.detach().cpu().numpy() for name, value in transform.state_dict().items()})
    for number, (x, codes) in enumerate(validations):
        arrays.update({f"validation{number}.x": x.detach().cpu().numpy(), f"validation{number}.codes": codes.detach().cpu().numpy()})
    job_headers = []
    for number, job in enumerate(jobs):
        arrays.update({f"job{number}.labeled": np.asarray(job.labeled, dtype=np.int64), f"job{number}.codes": np.asarray(job.codes, dtype=np.int64)})
        arrays[f"job{number}.held_back"] = np.asarray(job.held_back, dtype=np.int64)
        job_headers.append({"transform": _index(transforms, job.transform), "n_classes": job.n_classes, "options": job.options.to_dict()})
    if isinstance(rows, FeatureStream):
        row_spec: dict[str, Any] = {"path": str(rows.path)}
    else:
        row_spec = {"units": rows.units, "image_shape": rows.image_shape, "chunks": rows.chunks}
        arrays["rows"] = rows.x.detach().cpu().numpy()
    fit_headers = [
        {"job": _index(jobs, fit.job), "fold": fit.fold, "label": fit.label, "steps": fit.steps,
         "checkpoint": None if fit.checkpoint is None else str(fit.checkpoint), "resume": fit.resume, "fingerprint": fit.fingerprint,
         "validation": None if fit.validation is None else _index(validations, fit.validation)}
        for fit in fits
    ]  # fmt: skip
    header = {
        "kind": "fits", "rows": row_spec, "transforms": [transform.spec() for transform in transforms], "jobs": job_headers,
        "fits": fit_headers, "validations": len(validations), "threads": threads, "dtype": str(torch.get_default_dtype()).removeprefix("torch."),
    }  # fmt: skip
    return header, arrays


def _distinct(items: list[Any]) -> list[Any]:
    """``items`` without repeats of the same object, in their first order."""
    kept: list[Any] = []
    for item in items:
        if not any(item is seen for seen in kept):
            kept.append(item)
    return kept


def _index(items: list[Any], item: Any) -> int:
    """Where the object ``item`` itself is in ``items``."""
    return next(number for number, candidate in enumerate(items) if candidate is item)


def _fits_from_message(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[Fit]:
    """The fits of :func:`_fits_message` (this process's threads and dtype set as it says)."""
    torch.set_num_threads(int(header["threads"]))
    torch.set_default_dtype({"float32": torch.float32, "float64": torch.float64}[header["dtype"]])
    spec = header["rows"]
    rows: RowStore
    if "path" in spec:
        rows = FeatureStream(spec["path"])
    else:
        shape = tuple(spec["image_shape"]) if spec["image_shape"] else None
        rows = ArrayStore(torch.from_numpy(arrays["rows"]), chunks=int(spec["chunks"]), units=spec["units"], image_shape=shape)  # type: ignore[arg-type]
    transforms = []
    for number, transform_spec in enumerate(header["transforms"]):
        transform = build_transform(transform_spec)
        prefix = f"transform{number}."
        transform.load_state_dict({name[len(prefix) :]: torch.from_numpy(value) for name, value in arrays.items() if name.startswith(prefix)})
        transforms.append(transform)
    jobs = [
        FoldJob(rows, transforms[entry["transform"]], int(entry["n_classes"]), arrays[f"job{number}.labeled"], arrays[f"job{number}.codes"],
                TrainOptions.from_dict(entry["options"]), arrays[f"job{number}.held_back"])
        for number, entry in enumerate(header["jobs"])
    ]  # fmt: skip
    validations = [
        (torch.from_numpy(arrays[f"validation{number}.x"]), torch.from_numpy(arrays[f"validation{number}.codes"]))
        for number in range(int(header["validations"]))
    ]
    return [
        Fit(jobs[entry["job"]], entry["fold"], entry["label"], int(entry["steps"]), entry["checkpoint"], bool(entry["resume"]), entry["fingerprint"],
            None if entry["validation"] is None else validations[entry["validation"]])
        for entry in header["fits"]
    ]  # fmt: skip


def serve() -> None:
    """The worker's main: read its fits (:func:`_fits_message`) on stdin, run them in order, and
    write each one's result as it ends (:func:`~flowgmm_cli.fits.result_message`), progress
    between them, or the error that stopped them. Anything else the worker prints goes to stderr,
    never into the channel. When this process's parent is gone (killed), the next message fails
    to send and the worker exits at once, silently."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    fits = _fits_from_message(*read_message(sys.stdin.buffer))
    reporter = _Reporter(channel, fits)
    try:
        for index, fit in enumerate(fits):
            reporter.next_fit()
            header, arrays = result_message(run_fit(fit, reporter))
            write_message(channel, {**header, "index": index}, arrays)
        return
    except BaseException as error:  # noqa: BLE001 - every failure goes back to the parent, which raises it
        message = {"kind": "error", "type": type(error).__name__, "message": str(error)}
    try:
        write_message(channel, message)
    except OSError:
        os._exit(1)  # the parent is gone; nobody is left to tell
