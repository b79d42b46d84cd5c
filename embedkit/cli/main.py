"""The ``embedkit`` entry point: a typer app whose command groups live one per module.

Each module in ``COMMAND_MODULES`` exposes ``register(app)``; it may import only typer and the standard library at
module level so that ``embedkit --help`` stays fast. Every user error -- the three packages' typed errors, typer/click
usage errors, OSErrors (read-only or full disk), damaged JSON metadata -- becomes one ``error:`` line on stderr and
exit code 2 (``EMBEDKIT_DEBUG=1`` shows the traceback); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import importlib
import json
import logging
import os
import sys

import typer
try:  # typer vendors click as typer._click (0.29, tested); older typer raised click's own exceptions
    from typer._click import exceptions as click_exc
    from typer._click import utils as _click_utils
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exc
    from click import utils as _click_utils
from typer.core import TyperGroup

COMMAND_MODULES = ("info", "data", "phantoms", "models", "extract", "probe", "finetune", "retrieval", "demo", "predict", "study")

#: errno -> what to do about it (appended to the OS's own message and the path).
_OS_ADVICE = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EFBIG: "the file size limit was reached: free some space or write elsewhere",
    errno.EROFS: "the filesystem is read-only: choose a writable --out",
    errno.EACCES: "check the permissions or choose another path",
    errno.EPERM: "check the permissions or choose another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a path component is a file, not a folder: check the path",
    errno.EISDIR: "the path is a folder, not a file: check the path",
    errno.EEXIST: "the path exists: choose a new one",
    errno.ENAMETOOLONG: "use a shorter path",
}


def _user_error_types() -> tuple[type[BaseException], ...]:
    # Imported lazily: the error modules are tiny, but their packages' siblings are not.
    from embedkit.errors import EmbedkitError
    from probes.errors import ProbeError
    from stores.errors import StoreError

    return (EmbedkitError, StoreError, ProbeError, OSError)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _usage_message(exc: click_exc.UsageError) -> str:
    """click's message (without its usage block) plus where to read the usage."""
    if isinstance(exc, click_exc.BadParameter) and exc.param is None and exc.param_hint is None:
        msg = exc.message  # our own bad_parameter(): already a full sentence
    else:
        msg = exc.format_message()
    msg = _one_line(msg)
    path = exc.ctx.command_path if exc.ctx is not None else "embedkit"
    return f"{msg}{'' if msg.endswith(('.', '?', '!')) else '.'} See '{path} --help'."


def _os_message(exc: OSError) -> str:
    if exc.strerror is None:  # raised by our code with its own message
        return _one_line(str(exc)) or type(exc).__name__
    where = f": '{exc.filename}'" if exc.filename is not None else ""
    advice = _OS_ADVICE.get(exc.errno)
    return f"{exc.strerror}{where}" + (f"; {advice}." if advice else ".")


def _json_message(exc: json.JSONDecodeError) -> str:
    # The decoder does not know the file; the innermost frame holding a path-like local usually does.
    name = None
    tb = exc.__traceback__
    while tb is not None:
        for key in ("path", "key", "filename", "fname", "file"):
            value = tb.tb_frame.f_locals.get(key)
            if isinstance(value, (str, os.PathLike)) and str(value).endswith(".json"):
                name = str(value)
        tb = tb.tb_next
    what = f"'{name}'" if name else "A JSON metadata file"
    return (f"{what} is damaged and cannot be parsed ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "restore it or rebuild the output it belongs to.")


def error_line(exc: BaseException) -> tuple[str, int] | None:
    """The one ``error:`` line and exit code for a user error; None for a bug (which keeps its traceback).

    Parameters
    ----------
    exc : BaseException
        What a command raised (usage errors of typer/click included).

    Returns
    -------
    tuple of (str, int) or None
    """
    if isinstance(exc, click_exc.UsageError):
        return f"error: {_usage_message(exc)}", 2
    if isinstance(exc, click_exc.ClickException):
        return f"error: {_one_line(exc.format_message())}", 2
    if isinstance(exc, json.JSONDecodeError):
        return f"error: {_json_message(exc)}", 2
    if isinstance(exc, OSError):
        return f"error: {_os_message(exc)}", 2
    if isinstance(exc, _user_error_types()):
        return f"error: {_one_line(str(exc)) or type(exc).__name__}", 2
    return None


class EmbedkitGroup(TyperGroup):
    """A typer group that turns every user error -- typer's usage errors included -- into one line and exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: D102
        # typer's standalone mode prints a boxed, multi-line usage message; run non-standalone and print ours.
        try:
            rv = super().main(args=args, prog_name=prog_name or "embedkit", complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0  # non-standalone: Exit -> code
        except click_exc.NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help())
            code = 0
        except (typer.Abort, KeyboardInterrupt):
            typer.echo("error: interrupted.", err=True)
            code = 130
        except BaseException as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EPIPE:  # `embedkit ... | head`: quietly stop
                sys.stderr = _click_utils.PacifyFlushWrapper(sys.stderr)
                sys.stdout = _click_utils.PacifyFlushWrapper(sys.stdout)
                code = 1
            else:
                line = error_line(exc) if isinstance(exc, Exception) else None
                if line is None or os.environ.get("EMBEDKIT_DEBUG") == "1":
                    raise
                typer.echo(line[0], err=True)
                code = line[1]
        if standalone_mode:
            sys.exit(code)
        if code:
            raise typer.Exit(code)
        return rv


app = typer.Typer(
    cls=EmbedkitGroup,
    name="embedkit",
    help="Extract pretrained-backbone embeddings of chest radiographs once; probe, compare and search them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from embedkit import __version__

        typer.echo(f"embedkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log INFO messages to stderr."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


for _name in COMMAND_MODULES:
    importlib.import_module(f"embedkit.cli.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
