"""Option values shared by several commands: one spelling per concept, lists, usage errors.

Spellings used by every command (one per concept):

* ``--preset NAME`` the explain presets (methods) to run or show; ``--limit N`` the first N samples;
  ``--steps N`` a number of denoising steps; ``--step-indices I`` which steps to explain;
  ``--layers L`` which blocks; ``--overwrite`` replace an earlier output (never silently);
  ``--json`` machine-readable output.
* A list option takes repetition and commas alike: ``--preset a --preset b`` = ``--preset a,b``.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.errors import DcamError

#: Exit statuses of ``dcam``, one per kind of outcome (also in ``dcam --help``).
EXIT_CODES = {
    0: "success",
    1: "error: unreadable or invalid input data, a stage failed, an internal error",
    2: "usage error: unknown option, missing or bad option value, a path on the command line that does not exist",
    3: "some samples failed (the others were processed; reasons in the manifest and 'dcam inspect')",
    130: "interrupted",
}


class UsageError(DcamError):
    """A wrong command line (bad option value, conflicting options, a named path missing): exit status 2."""


def split_list(values: str | Sequence[str] | None) -> list[str] | None:
    """Values of a list option, repeated and/or comma-separated: ``["a,b", "c"]`` -> ``["a", "b", "c"]``.

    None (option not given) stays None; blanks around names are dropped.
    """
    if values is None:
        return None
    items = [values] if isinstance(values, str) else list(values)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def parse_int_list(values: str | Sequence[str] | None, option: str) -> list[int] | None:
    """``"0,3,7"`` or ``["0", "3,7"]`` -> ``[0, 3, 7]``; not given or empty -> None; else a usage error naming ``option``."""
    items = split_list(values)
    if not items:
        return None
    try:
        return [int(x) for x in items]
    except ValueError:
        raise UsageError(f"{option} must be integers (repeat the option or separate with commas), got {values!r}") from None


def require(condition: bool, option: str, message: str) -> None:
    """A one-line usage error ``{option}: {message}`` unless ``condition``."""
    if not condition:
        raise UsageError(f"{option}: {message}")


def check_at_least(value: int | float | None, minimum: int | float, option: str) -> None:
    """A usage error unless ``value`` is None or ``>= minimum``."""
    require(value is None or value >= minimum, option, f"must be >= {minimum}, got {value}")


def check_choice(value: str | None, choices: Sequence[str], option: str) -> None:
    """A usage error unless ``value`` is None or one of ``choices``."""
    require(value is None or value in choices, option, f"expected one of {', '.join(choices)}, got {value!r}")


def check_device(device: str, option: str = "--device") -> None:
    """``cpu``, ``cuda`` or ``cuda:N``, and CUDA present when asked for (a usage error otherwise)."""
    import re

    require(re.fullmatch(r"cpu|cuda(:\d+)?", device) is not None, option, f"expected cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        import torch

        require(torch.cuda.is_available(), option, f"{device}: CUDA is not available on this machine")


def check_slice_options(only: str | None, start: str | None) -> None:
    """``--only`` / ``--from``: a known explain stage, not both (:func:`stages.graph.check_slice`); exit 2."""
    from stages.graph import check_slice

    try:
        check_slice(only, start)
    except DcamError as e:
        raise UsageError(str(e)) from None
