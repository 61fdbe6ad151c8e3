"""Explain stages: feasible-step selection, base maps (Grad-CAM family), post-processing modules.

Each stage reads only its input artifact(s) and writes only its own, at a path
derived from its name, version, config and the content digests of its inputs
(:func:`stages.explain.addressing.artifact_dir`), so any one stage can be rerun
with new parameters without touching the others, and a rerun with the same inputs
finds its output already there.
"""
