"""Faithfulness building blocks with known answers: perturbations, curves, rank checks, flags, and a model whose
answer is planted in one grid cell (the occlusion map and the curves must find it)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from schemas.span import SpanLayout
from stages.capture.adapter import ModelAdapter, Prepared
from stages.capture.targets import Target
from stages.faithfulness import checks, perturb
from stages.faithfulness.model import PerturbationScorer, attribution_arrays, cascade_modules, reinitialise


# ------------------------------------------------------------------------------------------------ perturbations
def test_cell_index_image_splits_evenly_and_covers_every_pixel():
    cells = perturb.cell_index_image((6, 9), (2, 3))
    assert cells.tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2]] * 3 + [[3, 3, 3, 4, 4, 4, 5, 5, 5]] * 3
    uneven = perturb.cell_index_image((7, 5), (2, 2))  # edges at round(3.5) = 4 and round(2.5) = 2
    assert np.bincount(uneven.reshape(-1)).tolist() == [8, 12, 6, 9]
    with pytest.raises(ValueError, match="smaller than"):
        perturb.cell_index_image((2, 2), (3, 3))


def test_baselines_and_compose():
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2, :2] = 200
    mean = perturb.baseline_image(img, "mean")
    assert mean.shape == img.shape and np.all(mean == 50)  # 4 of 16 pixels at 200
    blur = perturb.baseline_image(img, "blur", grid=(2, 2))
    assert 0 < blur[3, 3, 0] < blur[0, 0, 0] < 200  # smeared, not removed
    cells = perturb.cell_index_image((4, 4), (2, 2))
    removed = np.array([[True, False, False, False], [False, False, False, True]])
    out = perturb.compose(img, mean, removed, cells)
    assert out.shape == (2, 4, 4, 3)
    assert np.all(out[0, :2, :2] == 50) and np.all(out[0, 2:, 2:] == 0)  # cell 0 replaced, the rest kept
    assert np.all(out[1, :2, :2] == 200) and np.all(out[1, 2:, 2:] == 50)
    with pytest.raises(ValueError, match="baseline"):
        perturb.baseline_image(img, "zeros")


def test_occlusion_windows_cover_every_cell_and_the_map_averages_them():
    one = perturb.occlusion_windows((3, 4), 1)
    assert one.shape == (12, 12) and np.array_equal(one, np.eye(12, dtype=bool))
    two = perturb.occlusion_windows((3, 4), 2, 1)
    assert two.shape == (2 * 3, 12) and two.sum(axis=1).tolist() == [4] * 6 and two.any(axis=0).all()
    # stride 2 on a side of 3: the last window is moved to the edge so the last row is covered
    assert perturb.occlusion_windows((3, 3), 2, 2).any(axis=0).all()
    # a cell covered by windows with drops 1 and 3 gets 2
    drops = np.array([[1.0], [3.0]])
    windows = np.array([[True, True, False], [False, True, True]])
    assert perturb.occlusion_map(drops, windows, (1, 3))[0].tolist() == [[1.0, 2.0, 3.0]]
    assert perturb.default_window((12, 12)) == 1 and perturb.default_window((32, 32)) > 1
    assert len(perturb.occlusion_windows((32, 32), perturb.default_window((32, 32)))) <= 256


def test_cell_order_descends_and_breaks_ties_randomly_but_reproducibly():
    m = np.array([[0.1, 0.9], [0.5, 0.3]])
    assert perturb.cell_order(m).tolist() == [1, 2, 3, 0]
    flat = np.zeros((6, 6))
    orders = {tuple(perturb.cell_order(flat, seed=s)) for s in range(5)}
    assert len(orders) == 5  # ties are not broken by index (that would delete the top-left first)
    assert np.array_equal(perturb.cell_order(flat, seed=3), perturb.cell_order(flat, seed=3))
    nan_last = perturb.cell_order(np.array([np.nan, 1.0, 0.0]))
    assert nan_last.tolist() == [1, 2, 0]


def test_curve_masks_remove_cells_in_order_in_equal_chunks():
    order = np.array([3, 0, 2, 1])
    masks = perturb.curve_masks(order, 3)
    assert masks.tolist() == [[False] * 4, [True, False, False, True], [True] * 4]
    assert perturb.curve_masks(np.arange(10), 5).sum(axis=1).tolist() == [0, 2, 5, 8, 10]  # round(k * 10 / 4)
    with pytest.raises(ValueError, match="points"):
        perturb.curve_masks(order, 1)


def test_normalised_auc_known_areas():
    assert perturb.normalised_auc(np.array([0.8, 0.8, 0.8]), 0.8) == pytest.approx(1.0)
    assert perturb.normalised_auc(np.linspace(1.0, 0.0, 11), 1.0) == pytest.approx(0.5)
    assert perturb.normalised_auc(np.array([0.5, 0.0, 0.0]), 0.5) == pytest.approx(0.25)
    assert math.isnan(perturb.normalised_auc(np.array([0.1, 0.0]), 0.0))


# ------------------------------------------------------------------------------------------------ rank checks
def test_spearman_known_values():
    a = np.arange(9.0).reshape(3, 3)
    assert checks.spearman(a, a ** 3) == pytest.approx(1.0)  # monotone transforms keep the ranking
    assert checks.spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(checks.spearman(a, np.ones((3, 3))))
    # ties get average ranks: x = [1, 2, 2, 3] ranks [1, 2.5, 2.5, 4]; y = [1, 2, 3, 4]
    assert checks.spearman(np.array([1, 2, 2, 3.0]), np.array([1, 2, 3, 4.0])) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert checks.mean_pairwise_spearman([a, a, -a]) == pytest.approx((1 - 1 - 1) / 3)
    assert math.isnan(checks.mean_pairwise_spearman([a]))


def test_token_norm_map():
    acts = np.array([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    assert checks.token_norm_map(acts, (2, 2)).tolist() == [[5.0, 1.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="grid"):
        checks.token_norm_map(acts, (3, 3))


def test_flags_name_each_failed_check_and_nothing_else():
    good = {"method": "m", "norm_spearman": 0.2, "target_sensitivity": 0.1, "randomisation_above_hook": 0.1,
            "deletion_auc": 0.2, "insertion_auc": 0.8, "random_deletion_auc_ci": [0.4, 0.5],
            "random_insertion_auc_ci": [0.3, 0.4]}
    assert checks.sanity_flags(good) == []
    bad = {**good, "norm_spearman": 0.9, "target_sensitivity": 0.95, "randomisation_above_hook": 0.97,
           "deletion_auc": 0.45, "insertion_auc": 0.35}
    flags = checks.sanity_flags(bad)
    assert [f.split(":")[0] for f in flags] == ["activation energy", "target-insensitive", "model-insensitive",
                                                 "no better than a random order"]
    # the reference and the noise map are not judged against themselves
    assert checks.sanity_flags({**bad, "method": "occlusion"})[0].startswith("target-insensitive")
    assert not any("random order" in f for f in checks.sanity_flags({**bad, "method": "random"}))


def test_summarise_means_intervals_and_randomisation_curve():
    per_map = pd.DataFrame({
        "sample_id": ["a", "a", "b", "c"], "method": ["m"] * 4,
        **{name: [0.1, 0.3, 0.2, 0.4] for name in checks.PER_MAP},
    })
    sens = pd.DataFrame({"sample_id": ["a", "b"], "layer": [1, 1], "method": ["m", "m"], "target_sensitivity": [0.2, 0.4]})
    rand = pd.DataFrame({"sample_id": ["a"] * 4, "target": [0, 0, 1, 1], "layer": [1] * 4, "method": ["m"] * 4,
                         "level_index": [1, 2, 1, 2], "level": ["head", "block1"] * 2, "spearman": [0.9, 0.1, 0.7, 0.3]})
    [rec] = checks.summarise(per_map, sens, rand, above_hook_level="head")
    assert rec["n_maps"] == 4 and rec["deletion_auc"] == pytest.approx(0.25)
    lo, hi = rec["deletion_auc_ci"]
    assert lo <= 0.25 <= hi and lo >= 0.1 - 1e-9 and hi <= 0.4 + 1e-9
    assert rec["target_sensitivity"] == pytest.approx(0.3)
    assert rec["randomisation"] == pytest.approx({"head": 0.8, "block1": 0.2})
    assert rec["randomisation_above_hook"] == pytest.approx(0.8)
    assert any(f.startswith("model-insensitive") for f in rec["flags"])


# ------------------------------------------------------------------------------------------------ a planted model
class PlantedAdapter(ModelAdapter):
    """A 'model' whose response logit for token 1 at position 0 is 10 x the mean red level of grid cell (1, 2) of
    a 4x4 grid over a 16x16 image, plus 0.1 x the hidden state's contribution (so gradients exist)."""

    family = "planted"
    mask_id, eos_id, gen_length = 3, 2, 2

    def __init__(self):
        torch.manual_seed(0)
        super().__init__(torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Linear(4, 4)))

    def blocks(self):
        return list(self.model)

    def prepare(self, image, prompt=None):
        px = torch.as_tensor(np.asarray(image), dtype=torch.float32)[..., 0] / 255.0  # red channel
        cells = px.reshape(4, 4, 4, 4).mean(dim=(1, 3)).reshape(1, 16, 1)  # (1, N, 1) token features
        return Prepared(prompt_embeds=cells, prompt_ids=None, span=SpanLayout(start=0, end=16, grid_h=4, grid_w=4))

    def full_logits(self, prep, x, *, prefix_dlm_mask=False):
        h = self.model[1](self.model[0](prep.prompt_embeds))  # (B, N, 4): blocks[1] is hooked
        planted = prep.prompt_embeds[:, 6, 0] * 10.0 + 0.1 * h[:, 6, 0]  # cell (1, 2) = token 6
        logits = torch.zeros(x.shape[0], prep.prompt_len + x.shape[1], 5)
        logits[:, 16, 1] = planted
        logits[:, :16, 1] = h[..., 0]
        return logits

    def prefix_pass(self, prep):
        raise NotImplementedError

    def answer_logits(self, prep, cache, x):
        raise NotImplementedError

    def default_prompt(self):
        return ""

    def decode(self, ids):
        return " ".join(map(str, ids))

    def word_groups(self, ids):
        return [(str(i), [p]) for p, i in enumerate(ids)]


def test_occlusion_and_deletion_find_the_planted_cell():
    ad = PlantedAdapter()
    img = np.full((16, 16, 3), 40, np.uint8)
    img[4:8, 8:12, 0] = 250  # cell (1, 2) is bright red
    target = Target(0, "word", "w", (0,), (1,), 0)
    scorer = PerturbationScorer(ad, mode="full", prompt=None)
    cells = perturb.cell_index_image((16, 16), (4, 4))
    base = perturb.baseline_image(img, "mean")
    windows = perturb.occlusion_windows((4, 4), 1)
    state = np.array([3, 3])
    ref = scorer(img[None], state, [target])["score"][0]
    drops = ref - scorer(perturb.compose(img, base, windows, cells), state, [target])["score"]
    occ = perturb.occlusion_map(drops, windows, (4, 4))[0]
    assert np.unravel_index(occ.argmax(), occ.shape) == (1, 2)
    slope = 10.0 + 0.1 * float((ad.model[1].weight @ ad.model[0].weight)[0, 0].detach())  # d logit / d cell feature
    assert occ[1, 2] == pytest.approx(slope * (250 - int(base[0, 0, 0])) / 255, rel=1e-4)
    assert scorer.forwards == 17  # one image per forward for a family not known to batch

    def deletion_auc(order):
        masks = perturb.curve_masks(order, 5)
        s = scorer(perturb.compose(img, base, masks, cells), state, [target])["score"][:, 0]
        return perturb.normalised_auc(s, s[0])

    best = deletion_auc(perturb.cell_order(occ))
    worst = deletion_auc(perturb.cell_order(-occ))
    assert best < worst  # removing the planted cell first kills the score at once


def test_attribution_arrays_and_randomisation_restore():
    ad = PlantedAdapter()
    img = np.full((16, 16, 3), 40, np.uint8)
    target = Target(0, "word", "w", (0,), (1,), 0)
    arrays = attribution_arrays(ad, img, np.array([3, 3]), [target], layer=1, mode="full", prompt=None)
    assert arrays["acts"].shape == (16, 4) and arrays["alpha"].shape == (1, 4) and arrays["gxa"].shape == (1, 16)
    # only token 6 reaches the score through the hidden state: its gradient is 0.1 on channel 0, zero elsewhere
    assert arrays["alpha"][0] == pytest.approx([0.1 / 16, 0, 0, 0])
    assert arrays["tam_logits"].shape == (1, 16)
    levels = cascade_modules(ad)
    assert [name for name, _ in levels] == ["block1", "block0"]  # no output head on this model
    before = [p.detach().clone() for p in ad.model.parameters()]
    reinitialise(levels[0][1], seed=1)
    after = list(ad.model.parameters())
    assert torch.equal(before[0], after[0]) and not torch.equal(before[2], after[2])  # only block1 changed
    reinitialise(levels[0][1], seed=1)
    again = after[2].detach().clone()
    reinitialise(levels[0][1], seed=1)
    assert torch.equal(again, after[2])  # seeded


# ------------------------------------------------------------------------------------------------ every family
@pytest.mark.parametrize("family", ["lavida-llada", "lavida-dream", "llada-v", "mmada"])
def test_perturbation_scores_reproduce_the_captured_attribution_scores(family):
    """The faithfulness stage scores a word exactly as its attribution row: same token state, same score, same
    forward (prefix-cache families through the Prefix-DLM mask), for every family's replica in its default mode;
    and its in-memory attribution arrays equal the captured ones."""
    from stages.capture.config import family_config
    from stages.capture.core import capture_sample
    from stages.capture.replicas import build_replica
    from stages.faithfulness.stage import _targets

    adapter = build_replica(family, seed=0)
    image = np.asarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3)), dtype=np.uint8)
    config = family_config(adapter, layers=[1], steps=4)
    cap = capture_sample(adapter, image, config, sample_id="s0")

    class Sample:  # the capture's arrays, as CaptureSample serves them
        targets = cap.attrs["targets"]

    targets = _targets(Sample)
    scorer = PerturbationScorer(adapter, mode=config.mode, prompt=None)
    attr_steps = list(cap.arrays["attr_steps"])
    checked = 0
    for t in targets.values():
        if t.kind != "word" or t.unmask_step not in attr_steps:
            continue
        r = attr_steps.index(t.unmask_step)
        state = cap.arrays["tokens"][t.unmask_step]
        got = scorer(image[None], state, [t])["score"][0, 0]
        assert got == pytest.approx(float(cap.arrays["score"][r, t.index]), rel=1e-4, abs=1e-4)
        arrays = attribution_arrays(adapter, image, state, [t], layer=1, mode=config.mode, prompt=None)
        np.testing.assert_allclose(arrays["alpha"][0], cap.layer_arrays[1]["alpha"][r, t.index], rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(arrays["gnorm"][0], cap.layer_arrays[1]["gnorm"][r, t.index], rtol=1e-3, atol=1e-5)
        checked += 1
    assert checked >= 1


def test_a_self_conditioned_family_is_refused_in_one_line():
    from schemas.errors import DcamError
    from stages.capture.replicas import build_replica

    adapter = build_replica("diffusion-gemma", seed=0)
    with pytest.raises(DcamError, match="self-condition"):
        PerturbationScorer(adapter, mode="full", prompt=None)
