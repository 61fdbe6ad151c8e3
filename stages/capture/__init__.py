"""Capture stage: the denoising trajectory, hooked activations and gradients, written to Zarr.

The one stage that needs the model (a GPU at real scale); every later stage runs
from its store alone, on a CPU. ``adapter`` defines what a model family supplies,
``registry`` lists the families (their adapters live in ``families/``, their tiny
replicas in ``replicas``), ``core`` captures one sample, ``run`` loops over a dataset
into a store.
"""
