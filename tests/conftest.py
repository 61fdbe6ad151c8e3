import sys

import pytest

from flows.env import set_defaults

set_defaults()


@pytest.fixture
def llava_cleanup(monkeypatch):
    """Forget any stand-in ``llava`` package a test imported (LaViDa's and LLaDA-V's share the name)."""
    yield
    for name in [m for m in sys.modules if m == "llava" or m.startswith("llava.")]:
        monkeypatch.delitem(sys.modules, name, raising=False)
