"""The ``dcam`` command line.

Each area registers its commands from its own module (``flows/cli_*.py``) so
that heavy libraries (torch, transformers, prefect) are imported only by the
command that needs them and ``dcam --help`` stays fast. Every error is printed as
one line (``dcam: error: ...``) with an exit status per kind of outcome
(:data:`flows.options.EXIT_CODES`, listed in ``dcam --help``); an unexpected
exception too, with its traceback only when ``DCAM_TRACEBACK=1``.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from flows.env import set_defaults
from flows.options import EXIT_CODES, UsageError
from schemas.errors import DcamError

set_defaults()  # offline by construction, before anything imports transformers or prefect

app = typer.Typer(
    name="dcam",
    help=(
        "Diffusion-CAM: where in the image a diffusion multimodal LLM looked when it wrote each word.\n\n"
        "Pipeline: data -> capture (model, GPU at scale) -> explain (select, Grad-CAM, AKD/DACG/CBA/SICD; CPU) "
        "-> score -> report. Every stage writes an artifact directory with a manifest.json.\n\n"
        "List options take repetition and commas alike (--preset a --preset b = --preset a,b).\n\n"
        "\b\nExit status:\n" + "\n".join(f"  {code:<4} {what}" for code, what in EXIT_CODES.items())
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

#: Modules that contribute commands, each with ``register(app)``.
COMMAND_MODULES = (
    "flows.cli_data",
    "flows.cli_toy",
    "flows.cli_capture",
    "flows.cli_inspect",
    "flows.cli_explain",
    "flows.cli_faithfulness",
    "flows.cli_refine",
    "flows.cli_score",
    "flows.cli_report",
    "flows.cli_run",
)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # an area not built yet
                continue
            raise
        mod.register(app)


_register_all()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"dcam {version('diffusion-cam')}")
        except PackageNotFoundError:
            typer.echo("dcam (not installed as a package)")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Options of ``dcam`` itself."""


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit."""
    print(f"dcam: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _is(exc: BaseException, name: str) -> bool:
    # typer >= 0.29 vendors its own click (typer._click), so match click's exception classes by name.
    return any(c.__name__ == name for c in type(exc).__mro__)


class _ReaderGone(Exception):
    """stdout's reader closed the pipe; not an OSError, so click does not turn it into exit status 1."""


class _PipeAwareStdout:
    """Proxy of ``sys.stdout`` that reports a closed pipe as :class:`_ReaderGone`."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise _ReaderGone from None

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise _ReaderGone from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _quiet_stdout(stream) -> None:
    """After a closed pipe (``dcam inspect ... | head``): send what is left to /dev/null; the reader chose to stop."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dcam`` console script."""
    stdout = sys.stdout
    sys.stdout = _PipeAwareStdout(stdout)
    try:
        rv = app(args=argv, prog_name="dcam", standalone_mode=False)
        sys.stdout.flush()
    except _ReaderGone:
        _quiet_stdout(stdout)  # the reader stopped reading: not an error
        raise SystemExit(0)
    except UsageError as e:
        fail(str(e), 2)
    except DcamError as e:
        fail(str(e), 1)
    except FileNotFoundError as e:
        fail(f"file not found: {e.filename or e}", 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as e:
        if _is(e, "NoArgsIsHelpError"):
            ctx = getattr(e, "ctx", None)
            print(ctx.get_help() if ctx else "")
            raise SystemExit(0)
        if _is(e, "UsageError"):
            ctx = getattr(e, "ctx", None)
            path = ctx.command_path if ctx else "dcam"
            fail(f"{e.format_message()} (see '{path} --help')".replace("\n", " "), 2)
        if _is(e, "Abort"):
            fail("aborted", 130)
        if os.environ.get("DCAM_TRACEBACK") == "1":
            raise
        text = " ".join(str(e).split()) or "no message"
        fail(f"internal error: {type(e).__name__}: {text} (rerun with DCAM_TRACEBACK=1 for the traceback)", 1)
    finally:
        sys.stdout = stdout
    if isinstance(rv, int) and rv != 0:
        raise SystemExit(rv)


if __name__ == "__main__":
    main()
