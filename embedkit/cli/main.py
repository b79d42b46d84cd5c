"""The ``embedkit`` entry point: a typer app whose command groups live one per module.

Each module in ``COMMAND_MODULES`` exposes ``register(app)``; it may import only typer and the standard library at
module level so that ``embedkit --help`` stays fast. Errors raised by the three packages become one line on stderr
and exit code 2 (``EMBEDKIT_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

import typer
from typer.core import TyperGroup

COMMAND_MODULES = ("info", "data", "phantoms", "models", "extract", "probe", "retrieval", "demo")

_HINT = "Run 'embedkit COMMAND --help' for usage; set EMBEDKIT_DEBUG=1 for a traceback."


def _user_error_types() -> tuple[type[BaseException], ...]:
    # Imported lazily: the error modules are tiny, but their packages' siblings are not.
    from embedkit.errors import EmbedkitError
    from probes.errors import ProbeError
    from stores.errors import StoreError

    return (EmbedkitError, StoreError, ProbeError, FileNotFoundError, NotADirectoryError, PermissionError)


class EmbedkitGroup(TyperGroup):
    """A typer group that maps user errors to one line and exit code 2."""

    def invoke(self, ctx):  # noqa: D102 - click API
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            # typer vendors its own click: its exceptions, not the click package's, carry usage errors and exits.
            raise
        except Exception as exc:  # noqa: BLE001 - filtered just below
            if os.environ.get("EMBEDKIT_DEBUG") == "1" or not isinstance(exc, _user_error_types()):
                raise
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(2) from None


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
