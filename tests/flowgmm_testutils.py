"""Helpers shared by the tests (imported as ``flowgmm_testutils``; conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch


def perturb_(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Add Gaussian noise to every parameter in place.

    The last linear layer of every coupling network starts at zero, so a fresh coupling is the
    identity; perturbing makes Jacobian and gradient checks meaningful.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.add_(scale * noise.to(parameter.dtype))
    return module


def state_equal(a: dict, b: dict) -> bool:
    """Two state dicts with the same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_cli(args: list, capsys=None) -> tuple[int, str, str]:
    """Run ``flowgmm ARGS`` in this process; returns (exit code, stdout, stderr), the outputs
    empty without ``capsys`` (in a module-scoped fixture, which cannot have it)."""
    from flowgmm_cli.cli import main

    old_argv = sys.argv
    sys.argv = ["flowgmm", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    finally:
        sys.argv = old_argv
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def interrupt_after(monkeypatch, epoch: int) -> None:
    """Make training stop with Ctrl-C right after it checkpoints ``epoch``, as a crash would leave it;
    ``monkeypatch.undo()`` lets the resumed run train normally."""
    from flowgmm_cli import training

    real_save = training._save_checkpoint

    def save_then_stop(path, model, optimizer, source, state, fingerprint):
        real_save(path, model, optimizer, source, state, fingerprint)
        if state.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_stop)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(relative: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason when it is absent (a user's clone)."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is not here; the shared data sets exist only on the team's machines")
    return path


def bad_input_failures(cases: dict[str, tuple[list, Path | None]], capsys) -> list[str]:
    """Run each case's ``flowgmm`` arguments and describe what went wrong for bad input:
    an exit code other than 2, a traceback, not exactly one line on stderr, an output left behind."""
    failures = []
    for name, (args, output) in cases.items():
        code, out, err = run_cli(args, capsys)
        message = err.strip()
        checks = (
            (f"exit {code}", code != 2),
            ("traceback", "Traceback" in err or "Traceback" in out),
            ("not one line", len(message.splitlines()) != 1),
            ("output left behind", output is not None and output.exists()),
        )
        problems = [problem for problem, bad in checks if bad]
        if problems:
            failures.append(f"{name}: {', '.join(problems)} — {message[:200]}")
    return failures
