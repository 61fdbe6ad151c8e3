"""Process environment every entry point sets before heavy imports (offline, quiet Prefect)."""

from __future__ import annotations

import os

DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # nothing in this tool may reach a model hub
    "TRANSFORMERS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # the default 20 s is too tight on 2 busy cores
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def set_defaults() -> None:
    """Set each variable of :data:`DEFAULTS` unless the user set it."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
