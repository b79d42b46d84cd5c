"""Output helpers shared by the command modules: rich on stderr for people, stdout for results and JSON."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

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
    """Print one strict JSON document on stdout (NaN/inf -> null; numpy scalars/arrays and paths converted)."""
    sys.stdout.write(dumps_strict(obj, indent=2) + "\n")


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes ``NaN``/``Infinity`` (they become ``null``), which strict parsers reject.

    Examples
    --------
    >>> dumps_strict({"auroc": float("nan"), "n": 3})
    '{"auroc": null, "n": 3}'
    """
    return json.dumps(to_strict(obj), allow_nan=False, **kwargs)


def to_strict(value: Any) -> Any:
    """A copy of ``value`` made of JSON types only: non-finite floats -> None, numpy -> Python, others -> str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, (str, int, float, bool)) or k is None else k: to_strict(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_strict(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return to_strict(value.tolist())
    if hasattr(value, "item"):
        return to_strict(value.item())
    return str(value)


def bad_parameter(name: str, command: str, expected: str, got: Any) -> typer.BadParameter:
    """The scikit-learn-style message: ``The 'x' parameter of cmd must be ... Got ...``."""
    return typer.BadParameter(f"The '{name}' parameter of {command} must be {expected}. Got {got!r}.")


def check_out(path: Path, *, noun: str, is_ours: Callable[[Path], bool], overwrite: bool | None = None,
              option: str = "--out") -> str:
    """Refuse an output path that is not ours to write: ``.``, ``..``, a folder above the current one, a file or a
    non-empty folder that is not a ``noun``, or (when the command has ``--overwrite``) an earlier ``noun``.

    Parameters
    ----------
    path : Path
        The output path the user gave.
    noun : str
        What the command writes (``"phantom folder"``, ``"manifest CSV"``); messages use it.
    is_ours : callable(Path) -> bool
        Whether an existing ``path`` (file or non-empty folder) is an output of this kind.
    overwrite : bool or None
        None: the command resumes/rewrites its own outputs (no ``--overwrite`` option); False/True: the value of
        the command's ``--overwrite``.
    option : str
        The option name for messages.

    Returns
    -------
    {"absent", "empty", "ours"}

    Raises
    ------
    OutputExistsError
        ``path`` must not be written.

    Examples
    --------
    >>> check_out(Path("runs/new"), noun="phantom folder", is_ours=lambda p: False)  # doctest: +SKIP
    'absent'
    """
    from embedkit.errors import OutputExistsError

    target = path.expanduser().resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if target == cwd or target in cwd.parents or target == home or target in home.parents:
        raise OutputExistsError(f"Refusing {option} '{path}': it is the current, home or a parent folder, and "
                                f"writing a {noun} there could replace other files. Give a new path.")
    if not os.path.lexists(target):
        return "absent"
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        return "empty"
    if not is_ours(target):
        what = "a folder" if target.is_dir() else "a file"
        raise OutputExistsError(f"{option} '{path}' is {what} that is not a {noun}; refusing to write into it "
                                "(nothing was changed). Give a new path.")
    if overwrite is False:
        raise OutputExistsError(f"{option} '{path}' already holds a {noun}; pass --overwrite to replace it, or give "
                                "a new path.")
    return "ours"


def only_entries(*names: str) -> Callable[[Path], bool]:
    """``is_ours`` for a folder output: a folder whose entries are all among ``names`` (and holds the first)."""
    def check(path: Path) -> bool:
        if not path.is_dir():
            return False
        entries = {p.name for p in path.iterdir()}
        return names[0] in entries and entries <= set(names)

    return check
