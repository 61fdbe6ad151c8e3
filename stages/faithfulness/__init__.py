"""Faithfulness: does a map show what the model used? Occlusion reference maps, deletion / insertion curves,
agreement with occlusion and sanity checks (:mod:`stages.faithfulness.stage`)."""
