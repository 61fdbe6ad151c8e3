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


@pytest.fixture(scope="module")
def toy_adapter():
    """A small random-init toy model's adapter (8 generated tokens, 3 blocks): capture mechanics need no training."""
    import torch

    from stages.capture.toy_adapter import ToyAdapter
    from stages.toy.model import ToyConfig, ToyDMLLM

    torch.manual_seed(0)
    return ToyAdapter(ToyDMLLM(ToyConfig(vision_hidden_size=32, hidden_size=32, intermediate_size=64, num_layers=3,
                                         num_heads=2, gen_length=8)).eval())


@pytest.fixture(scope="module")
def toy_image():
    """A synthetic scene (seed 1) for the toy model."""
    import numpy as np

    from stages.synth import render_scene

    return render_scene(np.random.default_rng(1)).image
