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


def die_with_parent() -> None:
    """``preexec_fn`` of a helper process that must not outlive this one, however this one ends (even by
    SIGKILL): the kernel sends it SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``; elsewhere the
    parent's own cleanup is all there is)."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
