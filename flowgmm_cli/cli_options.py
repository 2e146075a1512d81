"""Command-line flags derived from :class:`~flowgmm_cli.options.TrainOptions`: one declaration, no restating.

:func:`with_train_options` replaces a command's ``options: TrainOptions`` parameter by one Typer
option per field (help, panel, bounds, choices and the "auto" rule from the field's metadata) and
hands the command the assembled :class:`TrainOptions`. :func:`flag` names a library parameter as
the command line spells it, so library errors can be shown with the flag to change.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from enum import Enum

from .options import FlowKind, Panel, Permutation, Scaling, TrainOptions, option_fields

__all__ = ["with_train_options", "flag"]

F = TypeVar("F", bound=Callable[..., Any])

#: The Python type of each field, for Typer (the dataclass annotations are strings).
_TYPES = typing.get_type_hints(TrainOptions, localns={"Permutation": Permutation, "Scaling": Scaling, "FlowKind": FlowKind})


def flag(name: str) -> str:
    """The command-line flag of a library parameter: ``random_state`` → ``--seed``, ``val_fraction`` → ``--val-fraction``.

    Example:
        >>> flag("random_state"), flag("n_labeled")
        ('--seed', '--n-labeled')
    """
    fields = {spec.name: spec for spec in option_fields()}
    spelled = fields[name].metadata["flag"] if name in fields and fields[name].metadata["flag"] else name
    return "--" + spelled.replace("_", "-")


def _parameter(spec: dataclasses.Field) -> inspect.Parameter:
    meta = spec.metadata
    kind = _TYPES[spec.name]
    auto = meta["auto"]
    declarations = [flag(spec.name)] if meta["flag"] else []
    default = typer.Option(
        spec.default.value if isinstance(spec.default, Enum) else spec.default,
        *declarations,
        help=meta["help"],
        rich_help_panel=meta["panel"].value,
        min=meta["min"],
        max=meta["max"],
        show_default=f"auto: {auto}" if auto else True,
    )
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)


def _panel_rank(parameter: inspect.Parameter) -> int:
    """Arguments and options without a panel first, then the panels in :class:`Panel`'s order."""
    panel = getattr(parameter.default, "rich_help_panel", None)
    order = [p.value for p in Panel]
    return order.index(panel) + 1 if panel in order else 0


def with_train_options(command: F) -> F:
    """Give ``command`` one CLI option per :class:`TrainOptions` field in place of its ``options`` parameter."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "options"]
    fields = option_fields()

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        values = {spec.name: kwargs.pop(spec.name) for spec in fields}
        return command(options=TrainOptions(**values), **kwargs)

    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + [_parameter(spec) for spec in fields]
    parameters.sort(key=_panel_rank)  # stable: --help lists the panels in Panel's order
    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return typing.cast(F, wrapper)

