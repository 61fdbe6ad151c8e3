"""The ``dcam`` command line.

Each area registers its commands from its own module (``flows/cli_*.py``) so
that heavy libraries (torch, transformers, prefect) are imported only by the
command that needs them and ``dcam --help`` stays fast. Errors caused by the
user's input are printed as one line (``dcam: error: ...``) with a non-zero exit
status and no traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from flows.env import set_defaults
from schemas.errors import DcamError

set_defaults()  # offline by construction, before anything imports transformers or prefect

app = typer.Typer(
    name="dcam",
    help=(
        "Diffusion-CAM: where in the image a diffusion multimodal LLM looked when it wrote each word.\n\n"
        "Pipeline: data -> capture (model, GPU at scale) -> explain (select, Grad-CAM, AKD/DACG/CBA/SICD; CPU) "
        "-> score -> report. Every stage writes an artifact directory with a manifest.json."
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


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit."""
    print(f"dcam: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _is(exc: BaseException, name: str) -> bool:
    # typer >= 0.29 vendors its own click (typer._click), so match click's exception classes by name.
    return any(c.__name__ == name for c in type(exc).__mro__)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dcam`` console script."""
    try:
        rv = app(args=argv, prog_name="dcam", standalone_mode=False)
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
        raise
    if isinstance(rv, int) and rv != 0:
        raise SystemExit(rv)


if __name__ == "__main__":
    main()
