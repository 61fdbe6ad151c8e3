"""Parsing of option values shared by several commands."""

from __future__ import annotations

from schemas.errors import DcamError


def parse_int_list(text: str | None, option: str) -> list[int] | None:
    """``"0,3,7"`` -> ``[0, 3, 7]``; None or empty -> None; anything else -> one-line error naming ``option``."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DcamError(f"{option} must be comma-separated integers, got {text!r}") from None
