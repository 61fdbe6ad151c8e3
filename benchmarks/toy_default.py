"""Why the embedded default behaves as it does: per hooked block, where each base map points (not a test).

For each of ``--scenes`` freshly rendered scenes (:func:`stages.synth.render_scene`, seeded) and each object's
colour word and shape word (the object noun), the model is put in the state at which that word is unmasked,
as in ``benchmarks/toy_localisation.py``: the word's answer position and every later one hold ``<mask>``, the
earlier ones hold the reference caption, attention is fully bidirectional. The columns:

**Table 1, activation norm and geometry per block** (blocks 0, 1, 2; "after block b" = the output of LM
block b, what the capture stage hooks). ``|A| obj`` and ``|A| bg``: mean L2 norm of the image tokens on objects
(the named object's patches, :func:`stages.toy.train.patch_labels` rank > 0) and on the background (rank 0),
over every word state; ``obj/bg`` is their ratio. Then the mean cosine similarity of the token directions
``A_i / |A_i|``: ``obj-obj`` between two patches of the named object, ``obj-bg`` between a patch of it and a
background patch, ``bg-bg`` between two background patches (how much "every patch of an object carries one
code"); ``cos(G,A)``: mean over image tokens of ``|cos(G_i, A_i)|``; ``cos(alpha,A)``: mean of
``|cos(alpha, A_i)|`` (how far the gradient, and Grad-CAM's weight vector, are from orthogonal to the
activations; a pre-norm block reads ``A_i`` through RMSNorm, which is scale-invariant, so that path
contributes a gradient exactly orthogonal to ``A_i``).

**Table 2, pointing per block**. A map *points* when its argmax grid cell lies on the named object (the
patches ``patch_labels`` gives to that object). Shown separately for shape words and colour words. ``chance``
is the mean share of the grid the named object covers. ``A`` (N, D) are the image-token hidden states after the
block, ``G`` (N, D) the gradient of the word's **log-probability** at its position with respect to them;
``alpha = G.mean(0)``, ``alpha_pos = relu(G).mean(0)``, ``gxa = (G * A).sum(-1)`` (as the capture stage stores
them), and the maps are computed by the stage functions of :mod:`stages.basemaps`:

* ``diffusion-cam-base``: ``diffusion_cam_base(A, alpha_pos, normalize=False)``, ``mean_c ReLU(alpha_pos_c A_c)``;
* ``gradcam``: ``grad_cam_from_weights(A, alpha)``, signed ``A @ alpha``;
* ``llava-cam``: ``llava_cam(A, alpha_pos)``, ``mean_c alpha_pos_c A_c`` (signed, no threshold);
* ``grad-x-act``: ``grad_x_act(gxa)``;
* ``grad-norm``: ``|G_i|`` per token;
* ``act-norm``: ``|A_i|`` per token (it does not depend on the word at all beyond the answer state: the
  reference for "a map that explains the activations, not the word");
* ``inv-act-norm``: ``1 / |A_i|``, a control: the gradient through RMSNorm scales as ``1 / |A_i|``, so a
  gradient-magnitude map that points no better than this control says nothing about the word;
* ``dcam-base-unit`` (candidate): the official base on per-token L2-normalised activations,
  ``diffusion_cam_base(A / |A|, alpha_pos)``. Why: every LM block is pre-norm (RMSNorm at the input of
  attention and MLP), so what the next block reads of token ``i`` is its direction ``A_i / |A_i|`` (times a
  per-channel gain); its norm only scales the token's share in the residual stream. Dividing out the norm
  keeps the official weighting and removes the term a later block cannot see.
* ``gradcam-unit`` (candidate): signed Grad-CAM on the same unit activations, ``(A / |A|) @ alpha``, the
  cosine-like agreement of a token's direction with the mean gradient. Same argument, applied to the
  unclipped weights.
* ``dir-grad`` (candidate): the size of the gradient with respect to the token's direction ``u_i = A_i / |A_i|``,
  ``|A_i| * |G_i - (G_i . u_i) u_i|`` (the chain rule for ``A = |A| u``). It asks "how much would the word's
  score move if what the next block reads of this token changed", and it is free of the ``1 / |A_i|`` factor
  that makes ``grad-norm`` favour small-norm tokens.

None of the candidates has a free parameter; nothing was tuned to any figure here.

**Table 3, maps that do not depend on the hooked block**.

* ``tam``: ``tam_map`` of the word's class logit at each image position from the final logits (lm_head of
  the last hidden state), clipped at 0 as the stage does (a cell whose logit is the largest wins; a map
  that is 0 everywhere points at cell 0).

Occlusion costs about 400 perturbed forwards per word (the three variants), so it runs on the first
``--occlusion-scenes`` scenes only (default 6; every figure that involves it says over how many words).

* ``occl-mean-w1``: occlusion. Each grid cell in turn is replaced by the image's mean colour
  (:func:`stages.faithfulness.perturb.baseline_image`, ``compose``), the image is re-encoded, and the map is
  the drop of the word's **logit** (the score of the capture stage's default target and of the issue's
  occlusion reference; the gradients above use the log-probability) at its position in the same answer state, ``occlusion_map`` of the drops. All perturbed
  images of one word go through the model in one batched forward.
* ``occl-mean-w2``: the same with 2x2 windows at stride 1 (121 windows; a cell's value is the mean drop of
  the windows covering it).
* ``occl-blur-w1``: one cell at a time, replaced by a Gaussian blur of the image (sigma one cell; ROAD).

**Table 4, Spearman rank correlation per block**, mean over all words (shape and colour pooled; a constant
map gives no correlation and is left out of the mean): ``rho norm`` with the ``act-norm`` map of that block
(the issue's activation-energy check), ``rho occl`` with the ``occl-mean-w1`` map of the word.

Deterministic for a given ``--seed`` (scenes from ``numpy.random.default_rng(seed)``; the model has no
randomness at inference). Run from the repository root::

    PYTHONPATH=$PWD OMP_NUM_THREADS=2 python benchmarks/toy_default.py [--scenes 40] [--occlusion-scenes 6] \
        [--seed 11] [--weights DIR]

Measured on the 2-core shared development machine (2 torch threads, the job got 60% of them): 40 scenes (146
words) with the default 6 occlusion scenes (22 words) took 479 s: 41 s for the gradient part (``--occlusion-scenes 0``)
and the rest for the 9064 occlusion forwards (about 20 per second); occlusion on all 40 scenes would take
about an hour there. The output of that run and
the reading of it are in ``docs/embedded_default.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BLOCKS = (0, 1, 2)
BLOCK_MAPS = (
    "diffusion-cam-base", "gradcam", "llava-cam", "grad-x-act", "grad-norm", "act-norm", "inv-act-norm",
    "dcam-base-unit", "gradcam-unit", "dir-grad",
)
OCCLUSIONS = (("occl-mean-w1", "mean", 1), ("occl-mean-w2", "mean", 2), ("occl-blur-w1", "blur", 1))
FIXED_MAPS = ("tam",) + tuple(name for name, _, _ in OCCLUSIONS)
KINDS = ("shape", "colour")
GEOMETRY = ("obj-obj", "obj-bg", "bg-bg", "cos(G,A)", "cos(alpha,A)")


def off_diagonal_mean(square) -> float:
    """Mean of a square matrix without its diagonal; nan below 2 rows."""
    import numpy as np

    n = square.shape[0]
    return float((square.sum() - np.trace(square)) / (n * (n - 1))) if n > 1 else float("nan")


def block_maps(a, g, grid) -> dict:
    """The per-block maps of the module docstring from ``A`` (N, D) and ``G`` (N, D), as (h, w) arrays."""
    import numpy as np

    from stages.basemaps import diffusion_cam_base, grad_cam_from_weights, grad_x_act, llava_cam

    alpha = g.mean(0, dtype=np.float64).astype(np.float32)[None]
    alpha_pos = np.maximum(g, 0).mean(0, dtype=np.float64).astype(np.float32)[None]
    gxa = (g * a).sum(-1)[None]
    norm = np.linalg.norm(a, axis=-1)
    unit = a / np.maximum(norm, 1e-12)[:, None]
    h, w = grid
    return {
        "diffusion-cam-base": diffusion_cam_base(a, alpha_pos, grid, normalize=False)[0],
        "gradcam": grad_cam_from_weights(a, alpha, grid)[0],
        "llava-cam": llava_cam(a, alpha_pos, grid)[0],
        "grad-x-act": grad_x_act(gxa, grid)[0],
        "grad-norm": np.linalg.norm(g, axis=-1).reshape(h, w),
        "act-norm": norm.reshape(h, w),
        "inv-act-norm": (1.0 / np.maximum(norm, 1e-12)).reshape(h, w),
        "dcam-base-unit": diffusion_cam_base(unit, alpha_pos, grid, normalize=False)[0],
        "gradcam-unit": grad_cam_from_weights(unit, alpha, grid)[0],
        # gradient with respect to the token's direction u = A / |A|: |A| times G without its component along u
        "dir-grad": (norm * np.linalg.norm(g - (g * unit).sum(-1, keepdims=True) * unit, axis=-1)).reshape(h, w),
    }


def spearman(x, y) -> float:
    """Spearman rank correlation of two maps (average ranks for ties); nan when either is constant."""
    import numpy as np
    from scipy.stats import rankdata

    rx, ry = rankdata(np.ravel(x)), rankdata(np.ravel(y))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="model directory (default: the bundled weights)")
    ap.add_argument("--scenes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--occlusion-scenes", type=int, default=6,
                    help="occlusion maps on the first N scenes only (about 400 forwards per word; default 6)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from stages.faithfulness.perturb import baseline_image, cell_index_image, compose, occlusion_map, occlusion_windows
    from stages.basemaps import tam_map
    from stages.synth import render_scene
    from stages.toy.model import ToyDMLLM
    from stages.toy.train import answer_ids, patch_labels

    started = time.perf_counter()
    torch.set_grad_enabled(False)
    model = ToyDMLLM.from_pretrained(args.weights)
    grid = model.grid
    layers = model.language_model.layers
    mask_id = model.tokenizer.mask_id
    rng = np.random.default_rng(args.seed)

    def to_pixels(images: np.ndarray) -> torch.Tensor:
        # model.preprocess for a batch of (B, S, S, 3) uint8 images already at the model's size
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)
        return (x - 0.5) / 0.5

    windows = {w: occlusion_windows(grid, w, stride=1) for w in {w for _, _, w in OCCLUSIONS}}
    norm_sum = {(b, s): 0.0 for b in BLOCKS for s in ("obj", "bg")}
    norm_count = {(b, s): 0 for b in BLOCKS for s in ("obj", "bg")}
    hits: dict[tuple, list[bool]] = {}
    rho: dict[tuple, list[float]] = {}
    share: dict[str, list[float]] = {k: [] for k in KINDS}
    geometry: dict[tuple, list[float]] = {(b, c): [] for b in BLOCKS for c in GEOMETRY}
    n_words = n_occluded = skipped = forwards = 0

    for index in range(args.scenes):
        with_occlusion = index < args.occlusion_scenes
        scene = render_scene(rng, size=model.config.image_size)
        answer = torch.tensor(answer_ids(model, scene.caption))
        rank = patch_labels(scene, grid)[2]
        # one state per (object, word): the word's position and every later one masked
        words = [(k, kind, 4 * k + (2 if kind == "shape" else 1)) for k in range(len(scene.objects)) for kind in KINDS]
        states = torch.stack([torch.where(torch.arange(len(answer)) >= pos, mask_id, answer) for _, _, pos in words])
        word_ids = answer[[pos for _, _, pos in words]]
        rows = torch.arange(len(words))

        # gradients: one batched forward, every row its own word; the rows do not interact
        pixels = model.preprocess(scene.image)
        outputs: dict[int, torch.Tensor] = {}
        with torch.enable_grad():
            handles = [layers[b].register_forward_hook(lambda m, i, out, b=b: outputs.__setitem__(b, out)) for b in BLOCKS]
            try:
                prefix, (start, end) = model.embed_prompt(pixels.expand(len(words), -1, -1, -1))
                logits, _ = model.lm_forward(torch.cat([prefix, model.embed_tokens(states)], dim=1))
            finally:
                for h in handles:
                    h.remove()
            p = prefix.shape[1]
            positions = torch.tensor([pos for _, _, pos in words])
            logp = logits[rows, p + positions].log_softmax(-1)[rows, word_ids]
            grads = dict(zip(BLOCKS, torch.autograd.grad(logp.sum(), [outputs[b] for b in BLOCKS])))
        acts = {b: outputs[b].detach()[:, start:end].numpy() for b in BLOCKS}
        grads = {b: grads[b][:, start:end].numpy() for b in BLOCKS}
        logits = logits.detach()
        tam = logits[rows, start:end].gather(-1, word_ids.view(-1, 1, 1).expand(-1, end - start, 1))[..., 0].numpy()

        # occlusion: per baseline and window, all perturbed images of one word in one forward
        cells = cell_index_image(scene.image.shape[:2], grid)
        occl: dict[str, np.ndarray] = {}
        for name, kind, w in OCCLUSIONS if with_occlusion else ():
            base = baseline_image(scene.image, kind, grid=grid)
            images = compose(scene.image, base, windows[w], cells)
            feats, _ = model.embed_prompt(to_pixels(np.concatenate([scene.image[None], images])))
            drops = np.empty((len(windows[w]), len(words)))
            for r, (_, _, pos) in enumerate(words):
                x = model.embed_tokens(states[r : r + 1]).expand(feats.shape[0], -1, -1)
                out, _ = model.lm_forward(torch.cat([feats, x], dim=1))
                score = out[:, p + pos, word_ids[r]].double().numpy()
                drops[:, r] = score[0] - score[1:]
                forwards += feats.shape[0]
            occl[name] = occlusion_map(drops, windows[w], grid)

        for r, (k, kind, pos) in enumerate(words):
            on_object = rank == k + 1
            if not on_object.any():
                skipped += 1
                continue
            n_words += 1
            share[kind].append(float(on_object.mean()))
            fixed = {"tam": tam_map(tam[r : r + 1], grid)[0], **{name: occl[name][r] for name in occl}}
            for name, m in fixed.items():
                hits.setdefault((None, name, kind), []).append(bool(on_object[int(np.argmax(m))]))
            if with_occlusion:
                n_occluded += 1
            for b in BLOCKS:
                a, g = acts[b][r], grads[b][r]
                norms = np.linalg.norm(a, axis=-1)
                for where, sel in (("obj", on_object), ("bg", rank == 0)):
                    norm_sum[(b, where)] += float(norms[sel].sum())
                    norm_count[(b, where)] += int(sel.sum())
                unit = a / np.maximum(norms, 1e-12)[:, None]
                sim = unit @ unit.T
                bg = rank == 0
                geometry[(b, "obj-obj")].append(off_diagonal_mean(sim[np.ix_(on_object, on_object)]))
                geometry[(b, "obj-bg")].append(float(sim[np.ix_(on_object, bg)].mean()) if bg.any() else np.nan)
                geometry[(b, "bg-bg")].append(off_diagonal_mean(sim[np.ix_(bg, bg)]))
                gn = np.linalg.norm(g, axis=-1)
                geometry[(b, "cos(G,A)")].append(float(np.mean(np.abs((g * unit).sum(-1)) / np.maximum(gn, 1e-30))))
                alpha = g.mean(0)
                geometry[(b, "cos(alpha,A)")].append(float(np.mean(np.abs(unit @ alpha)) / max(np.linalg.norm(alpha), 1e-30)))
                maps = block_maps(a, g, grid)
                for name, m in maps.items():
                    hits.setdefault((b, name, kind), []).append(bool(on_object[int(np.argmax(m))]))
                for name, m in {**maps, **fixed}.items():
                    rho.setdefault((b, name, "norm"), []).append(spearman(m, maps["act-norm"]))
                    if with_occlusion:
                        rho.setdefault((b, name, "occl"), []).append(spearman(m, occl["occl-mean-w1"][r]))

    elapsed = time.perf_counter() - started
    counts = {kind: len(share[kind]) for kind in KINDS}
    print(f"toy default: {args.scenes} scenes (seed {args.seed}), {n_words} words ({counts['shape']} shape, {counts['colour']} colour)"
          f"{f', {skipped} skipped (object on no patch)' if skipped else ''}; {elapsed:.0f} s, {forwards} occlusion forwards")
    print("gradients: d log p(word) / d (image-token hidden state after the block); occlusion: drop of the word's logit\n")

    print("1. activation norm at the image tokens")
    print(f"{'block':>5}  {'|A| obj':>8}  {'|A| bg':>8}  {'obj/bg':>7}  " + "  ".join(f"{c:>12}" for c in GEOMETRY))
    for b in BLOCKS:
        obj = norm_sum[(b, 'obj')] / max(norm_count[(b, 'obj')], 1)
        bg = norm_sum[(b, 'bg')] / max(norm_count[(b, 'bg')], 1)
        print(f"{b:>5}  {obj:>8.2f}  {bg:>8.2f}  {obj / bg:>7.3f}  "
              + "  ".join(f"{np.nanmean(geometry[(b, c)]):>12.3f}" for c in GEOMETRY))

    chance = "  ".join(f"{kind} {np.mean(share[kind]):.3f}" for kind in KINDS)
    print(f"\n2. pointing per hooked block (argmax cell on the named object); chance = object's share of the grid: {chance}")
    head = "  ".join(f"{f'b{b} ' + kind:>9}" for b in BLOCKS for kind in KINDS)
    print(f"{'map':<19}  {head}")
    for name in BLOCK_MAPS:
        print(f"{name:<19}  " + "  ".join(f"{np.mean(hits[(b, name, kind)]):>9.3f}" for b in BLOCKS for kind in KINDS))

    print(f"\n3. pointing of maps that do not depend on the hooked block (tam: all {n_words} words; "
          f"occlusion: the {n_occluded} words of the first {min(args.occlusion_scenes, args.scenes)} scenes)")
    print(f"{'map':<19}  " + "  ".join(f"{kind:>9}" for kind in KINDS))
    for name in FIXED_MAPS:
        print(f"{name:<19}  " + "  ".join(f"{np.mean(hits.get((None, name, kind), [np.nan])):>9.3f}" for kind in KINDS))

    print(f"\n4. Spearman rank correlation, mean over words: with the block's act-norm map (all words) / with "
          f"occl-mean-w1 (the {n_occluded} occluded words)")
    print(f"{'map':<19}  " + "  ".join(f"{f'b{b} norm':>8}  {f'b{b} occl':>8}" for b in BLOCKS))
    for name in BLOCK_MAPS + FIXED_MAPS:
        cells_ = []
        for b in BLOCKS:
            for ref in ("norm", "occl"):
                values = rho.get((b, name, ref), [])
                cells_.append(f"{np.nanmean(values) if np.isfinite(values).any() else float('nan'):>8.3f}")
        print(f"{name:<19}  " + "  ".join(cells_))


if __name__ == "__main__":
    main()
