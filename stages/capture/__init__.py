"""Capture stage: the denoising trajectory, hooked activations and gradients, written to Zarr.

The one stage that needs the model (a GPU at real scale); every later stage runs
from its store alone, on a CPU. ``adapter`` defines what a model family supplies,
``registry`` lists the families (their adapters live in ``families/``, their tiny
replicas in ``replicas``), ``core`` captures one sample, ``run`` loops over a dataset
into a store.
"""

#: The capture node's version (part of every store's key; ``stages.graph.NODES["capture"]``). 1.1: gnorm
#: recorded; 1.2: the stored gradient reductions are configured (the chains' base methods declare them).
STAGE_VERSION = "1.2"
