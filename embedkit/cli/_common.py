"""Output helpers shared by the command modules: rich on stderr for people, stdout for results and JSON."""
from __future__ import annotations

import json
import sys
from typing import Any

import typer


def err_console():
    """A rich console on stderr (progress, tables meant for people)."""
    from rich.console import Console

    return Console(stderr=True)


def out_console():
    """A rich console on stdout (result tables)."""
    from rich.console import Console

    return Console()


def print_json(obj: Any) -> None:
    """Print one JSON document on stdout (numpy scalars and paths are converted)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def bad_parameter(name: str, command: str, expected: str, got: Any) -> typer.BadParameter:
    """The scikit-learn-style message: ``The 'x' parameter of cmd must be ... Got ...``."""
    return typer.BadParameter(f"The '{name}' parameter of {command} must be {expected}. Got {got!r}.")
