"""The calibration fits: short fits that each hide one fold of the labels and score its rows, here
or in a second process beside the model's fit.

The fits do not depend on the model, so with two or more CPU threads they run in a child process
(:class:`CalibrationFits`) while this one fits the model, each with half the threads: on two cores
a default digits fit takes the model's time instead of the model's and the fits' added together.
The child runs the same code with the same seeds; on the same number of threads its scores are
the ones a sequential fit computes (``torch.set_num_threads(1)`` in both, as the tests check).
Under ``torchrun``, on a GPU or with one thread, the fits run here after the model.

Example:
    >>> from flowgmm_cli import FlowGMMClassifier
    >>> from sklearn.datasets import make_blobs
    >>> X, y = make_blobs(300, centers=2, random_state=0)
    >>> y[20:] = -1
    >>> FlowGMMClassifier(epochs=6, hidden=8, coupling_layers=2).fit(X, y).temperature_ >= 1.0
    True
"""

from __future__ import annotations

import copy
import json
import math
import os
import struct
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .defaults import calibration_epochs, steps_per_epoch
from .devices import resolve_device
from .distributed import setup, world
from .errors import InputError, TrainingDiverged
from .factory import build_model, build_objective, build_schedule, build_source
from .inference import joint, map_rows
from .model import FlowGMM
from .options import TrainOptions
from .splits import stratified_folds
from .stores import ArrayStore, FeatureStream, RowStore, SubsetStore
from .training import EpochReport, ForwardingCallback, NamedPhases, TrainingCallback, announce_phase, train
from .transforms import TransformChain, build_transform

__all__ = ["FoldJob", "CalibrationFits", "train_one", "held_out_scores", "serve"]

#: Seconds between progress updates while the model's fit waits for the child's.
_WAIT_TICK = 0.25


def train_one(
    rows: RowStore, transform: TransformChain, n_classes: int, labeled: np.ndarray, codes: np.ndarray, unlabeled: np.ndarray,
    options: TrainOptions, validation: tuple[torch.Tensor, torch.Tensor] | None = None, **run: Any,
) -> tuple[FlowGMM, list[dict[str, Any]]]:  # fmt: skip
    """One model trained on ``rows``: the rows ``labeled`` with classes ``codes``, the rows where
    ``unlabeled`` is true without; ``run`` goes to :func:`~flowgmm_cli.training.train`."""
    here, device = setup(resolve_device(options.device))
    torch.manual_seed(options.random_state)
    model = build_model(copy.deepcopy(transform), n_classes, options, rows.image_shape).to(device)
    x_labeled = rows.read_rows(labeled).to(device)
    y_codes = torch.from_numpy(np.asarray(codes, dtype=np.int64)).to(device)
    source = build_source(SubsetStore(rows, unlabeled), x_labeled, y_codes, model, options, here)
    history = train(model, source, build_objective(model, options), build_schedule(options), validation, **run)
    return model, history


@dataclass
class FoldJob:
    """What the calibration fits need: the rows, the fitted input transform, the labeled rows
    (indices into ``rows``) with their class codes, and the model's resolved options."""

    rows: RowStore
    transform: TransformChain
    n_classes: int
    labeled: np.ndarray
    codes: np.ndarray
    options: TrainOptions


def held_out_scores(job: FoldJob, callback: TrainingCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``log p(x, y=k)`` of each labeled row that some fold holds out, from the fit that did not see
    its label, and those rows' class codes.

    Each of ``calibration_folds`` short fits (:func:`~flowgmm_cli.defaults.calibration_epochs`:
    a sixth of the steps, at least 500 behind a principal projection; same seed and options) hides
    one stratified fold of the labels, those rows unlabeled, and scores them. A class's only
    labeled row is in no fold and is not scored.
    """
    options = job.options
    folds = stratified_folds(job.codes, options.calibration_folds, options.random_state)
    log_joint = np.zeros((len(job.labeled), job.n_classes))
    for fold in range(options.calibration_folds):
        held = folds == fold
        if not held.any():
            continue
        announce_phase(callback, f"calibration fit {fold + 1}/{options.calibration_folds}")
        unlabeled = np.ones(job.rows.n_rows, dtype=bool)
        unlabeled[job.labeled[~held]] = False  # the fold's rows join the unlabeled ones
        labeled_batch = min(options.labeled_batch_size, int((~held).sum()))
        epoch_steps = steps_per_epoch(int((~held).sum()), int(unlabeled.sum()), options.batch_size, labeled_batch)
        fold_options = replace(options, epochs=calibration_epochs(options.epochs, epoch_steps, projected=bool(options.projection_dim)), labeled_batch_size=labeled_batch)
        model, _ = train_one(job.rows, job.transform, job.n_classes, job.labeled[~held], job.codes[~held], unlabeled, fold_options, callback=callback)
        log_joint[held] = map_rows(model, job.rows.read_rows(job.labeled[held]).numpy(), joint, job.n_classes)
    scored = folds >= 0
    return log_joint[scored], job.codes[scored]


def can_run_beside(device: torch.device, rows: RowStore) -> bool:
    """Whether the calibration fits may run in a second process: on the CPU, with at least two
    threads to share (``--threads``), not already one of several ``torchrun`` processes, and with
    rows the child can get (in memory, or a feature file it opens itself)."""
    return device.type == "cpu" and not world().distributed and torch.get_num_threads() >= 2 and isinstance(rows, (ArrayStore, FeatureStream))


class CalibrationFits:
    """The calibration fits of one ``fit``: started beside the model's fit, or run after it.

    Use as a context manager around the model's fit, passing :attr:`callback` to it; then
    :meth:`scores`. Beside the fit, this process keeps half its threads while the child runs; the
    progress :attr:`callback` reports counts the child's steps too, and raises the child's error as
    soon as it arrives. A ``name`` says whose fits they are in the phases announced (by default they
    are the model's, beside its fit). If the child cannot start or dies without a word (killed for
    memory), the fits run here instead, with a warning. Leaving the block stops a child that still runs.
    """

    def __init__(self, job: FoldJob, callback: TrainingCallback | None, beside: bool, name: str | None = None) -> None:
        self.job, self._callback = job, callback
        self._name = name
        self._phase = f"model and {job.options.calibration_folds} calibration fits" if name is None else f"{name}, calibration fits in a second process"
        self._threads = torch.get_num_threads()
        self._child: _Child | None = None
        self._merged: _MergedProgress | None = None
        self._beside = beside

    def __enter__(self) -> "CalibrationFits":
        if self._beside:
            try:
                self._child = _Child(self.job, threads=self._threads // 2)
            except OSError as error:
                warnings.warn(f"the calibration fits could not start in a second process ({error}); they run after the model instead", RuntimeWarning, stacklevel=2)
        if self._child is not None:
            self._merged = _MergedProgress(self._callback, self._child)
            announce_phase(self._callback, self._phase)
            torch.set_num_threads(self._threads - self._threads // 2)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._threads)
        if self._child is not None:
            self._child.stop()

    @property
    def callback(self) -> TrainingCallback | None:
        """The callback for the model's fit: the user's, or one that adds the child's progress."""
        return self._merged if self._merged is not None else self._callback

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`held_out_scores` of the job: the child's, once it is done, or computed here."""
        torch.set_num_threads(self._threads)
        if self._child is not None and self._merged is not None:
            result = self._child.wait(self._merged.report)
            if result is not None:
                return result
            warnings.warn(f"the calibration fits' process ended without a result ({self._child.exit_description()}); they run again here", RuntimeWarning, stacklevel=2)
        return held_out_scores(self.job, self._callback if self._name is None else NamedPhases(self._callback, self._name))


class _MergedProgress(ForwardingCallback):
    """The model's progress plus the child's steps, reported to the user's callback from this
    thread only; raises the child's exception at the next step after it arrives."""

    def __init__(self, callback: TrainingCallback | None, child: "_Child") -> None:
        super().__init__(callback)
        self._child = child
        self._step = self._total = 0

    def on_step(self, step: int, total_steps: int) -> None:
        self._step, self._total = step, total_steps
        self.report()

    def report(self) -> None:
        self._child.raise_error()
        if self._callback is not None:
            done, total = self._child.progress
            self._callback.on_step(self._step + done, self._total + total)


class _Child:
    """The child process: a thread sends it the job on its stdin, another reads its messages
    (:func:`_write_message`: ``progress`` with ``done`` and ``total``, then ``scores`` with the
    arrays ``log_joint`` and ``codes``, or ``error`` with the exception's type and message)."""

    def __init__(self, job: FoldJob, threads: int) -> None:
        self._process = subprocess.Popen(_child_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._changed = threading.Condition()
        self.progress: tuple[int, int] = (0, 0)
        self._result: tuple[np.ndarray, np.ndarray] | None = None
        self._error: BaseException | None = None
        self._ended = False
        threading.Thread(target=self._send, args=(job, threads), daemon=True).start()
        self._reader = threading.Thread(target=self._receive, daemon=True)
        self._reader.start()

    def _send(self, job: FoldJob, threads: int) -> None:
        assert self._process.stdin is not None
        try:
            with self._process.stdin as pipe:
                _write_message(pipe, *_job_message(job, threads))
        except OSError:
            self._process.kill()  # the child is already gone: it ends without a result

    def _receive(self) -> None:
        assert self._process.stdout is not None
        try:
            while True:
                header, arrays = _read_message(self._process.stdout)
                with self._changed:
                    if header["kind"] == "progress":
                        self.progress = (int(header["done"]), int(header["total"]))
                    elif header["kind"] == "scores":
                        self._result = (arrays["log_joint"], arrays["codes"])
                    else:
                        self._error = _KNOWN_ERRORS.get(header["type"], RuntimeError)(header["message"])
        except Exception:  # noqa: BLE001 - the end of the stream, or a message that cannot be read: no result from the child
            pass
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def raise_error(self) -> None:
        """Raise the child's exception, if it sent one."""
        if self._error is not None:
            raise self._error

    def wait(self, tick: Callable[[], None]) -> tuple[np.ndarray, np.ndarray] | None:
        """The child's scores once it ends (``None`` if it ended without them); ``tick`` reports
        progress meanwhile and raises the child's exception."""
        with self._changed:
            while not self._ended:
                tick()
                self._changed.wait(_WAIT_TICK)
        if self._result is None:
            self._process.kill()  # no result is coming: a child still running would only block on a full pipe
        self._process.wait()
        tick()
        return self._result

    def exit_description(self) -> str:
        code = self._process.poll()
        return f"exit code {code}" if code is None or code >= 0 else f"signal {-code}"

    def stop(self) -> None:
        """Kill the child if it still runs, reap it, and close its pipe."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._reader.join()
        assert self._process.stdout is not None
        self._process.stdout.close()


def _child_command() -> list[str]:
    """``python -c ...`` that imports this package from where this process imported it (not from
    whatever the working directory holds) and runs :func:`serve`. A fresh interpreter rather than
    ``multiprocessing``: forking after torch has started its threads can hang, and spawning
    re-imports the caller's main script, which an unguarded script cannot survive."""
    root = str(Path(__file__).resolve().parents[1])
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r}); from flowgmm_cli.crossfit import serve; serve()"]


class _Reporter:
    """The child's callback: its steps over all folds, as messages on the channel (every 1% or so)."""

    def __init__(self, channel: IO[bytes], folds: int) -> None:
        self._channel, self._folds = channel, folds
        self._finished_steps = self._fold = 0
        self._last_total = self._last_sent = 0

    def on_phase(self, label: str) -> None:
        self._finished_steps += self._last_total
        self._fold += 1
        self._last_total = 0

    def on_step(self, step: int, total_steps: int) -> None:
        self._last_total = total_steps
        done = self._finished_steps + step
        total = self._finished_steps + total_steps * (self._folds - self._fold + 1)
        if done - self._last_sent >= max(1, total // 100) or step == total_steps:
            _write_message(self._channel, {"kind": "progress", "done": done, "total": total})
            self._last_sent = done

    def on_epoch_end(self, report: EpochReport) -> None:
        pass


#: Exceptions a failed child's message is raised as in the parent (by name); any other is a RuntimeError.
_KNOWN_ERRORS: dict[str, type[Exception]] = {"InputError": InputError, "OptionError": InputError, "TrainingDiverged": TrainingDiverged}
#: Array types a message may carry (no objects), and the most JSON a message header may hold.
_ARRAY_KINDS = "fiub"
_MAX_HEADER = 1 << 24


def _write_message(stream: IO[bytes], header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
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


def _read_message(stream: IO[bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A message of :func:`_write_message`; ``EOFError`` at the end of the stream, ``ValueError``
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


def _job_message(job: FoldJob, threads: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """:class:`FoldJob`, a thread count and torch's default dtype as a message: options and the
    transform's spec in the header; the rows (unless the child reads them from their file), the
    labeled rows, their codes and the transform's statistics as arrays."""
    arrays = {"labeled": np.asarray(job.labeled, dtype=np.int64), "codes": np.asarray(job.codes, dtype=np.int64)}
    arrays.update({f"transform.{name}": value.detach().cpu().numpy() for name, value in job.transform.state_dict().items()})
    if isinstance(job.rows, FeatureStream):
        rows: dict[str, Any] = {"path": str(job.rows.path)}
    else:
        rows = {"units": job.rows.units, "image_shape": job.rows.image_shape, "chunks": job.rows.chunks}
        arrays["rows"] = job.rows.x.detach().cpu().numpy()
    header = {
        "kind": "job", "rows": rows, "transform": job.transform.spec(), "n_classes": job.n_classes,
        "options": job.options.to_dict(), "threads": threads, "dtype": str(torch.get_default_dtype()).removeprefix("torch."),
    }  # fmt: skip
    return header, arrays


def _job_from_message(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> FoldJob:
    """The :class:`FoldJob` of :func:`_job_message` (this process's threads and dtype set as it says)."""
    torch.set_num_threads(int(header["threads"]))
    torch.set_default_dtype({"float32": torch.float32, "float64": torch.float64}[header["dtype"]])
    spec = header["rows"]
    if "path" in spec:
        rows: RowStore = FeatureStream(spec["path"])
    else:
        shape = tuple(spec["image_shape"]) if spec["image_shape"] else None
        rows = ArrayStore(torch.from_numpy(arrays["rows"]), chunks=int(spec["chunks"]), units=spec["units"], image_shape=shape)  # type: ignore[arg-type]
    transform = build_transform(header["transform"])
    prefix = "transform."
    transform.load_state_dict({name[len(prefix) :]: torch.from_numpy(value) for name, value in arrays.items() if name.startswith(prefix)})
    options = TrainOptions.from_dict(header["options"])
    return FoldJob(rows, transform, int(header["n_classes"]), arrays["labeled"], arrays["codes"], options)  # type: ignore[arg-type]


def serve() -> None:
    """The child's main: read a job (:func:`_job_message`) on stdin, run :func:`held_out_scores`,
    and write its progress and result (or its error) on stdout. Anything else the child prints
    goes to stderr, never into the channel. When the parent is gone (killed), the next message
    fails to send and the child exits at once, silently."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    job = _job_from_message(*_read_message(sys.stdin.buffer))
    try:
        log_joint, codes = held_out_scores(job, _Reporter(channel, job.options.calibration_folds))
        header, arrays = {"kind": "scores"}, {"log_joint": log_joint, "codes": codes}
    except BaseException as error:  # noqa: BLE001 - every failure goes back to the parent, which raises it
        header, arrays = {"kind": "error", "type": type(error).__name__, "message": str(error)}, {}
    try:
        _write_message(channel, header, arrays)
    except OSError:
        os._exit(1)  # the parent is gone; nobody is left to tell
