"""Where do the toy model's gradients point? Pointing accuracy of raw gradient maps per LM block (not a test).

For each of N freshly rendered scenes and each object's colour and shape word, the word's position and every
later answer position are masked (as at the step the word is unmasked), the other positions hold the
reference caption, and the log-probability of the word is differentiated with respect to the image-token
hidden states after blocks 0, 1 and 2. Five maps are formed from the activations ``A`` (N, d) and gradients
``G`` (N, d) at the image positions:

* ``gradcam``  : ``A @ mean_s(G)`` (Grad-CAM's spatially averaged channel weights), and its negative;
* ``gxa``      : ``sum_c G * A`` per position (gradient x activation), and its negative;
* ``gnorm``    : ``|G|`` per position.

A map "points" when its argmax patch lies on the named object (a patch :func:`stages.toy.train.patch_labels`
gives to it: the object covering most of the patch, at least a quarter). Chance is the object's share of the grid (about 5-10%).

    python benchmarks/toy_localisation.py [--weights DIR] [--scenes 60] [--seed 11]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="model directory (default: the bundled weights)")
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()

    import numpy as np
    import torch

    from stages.synth import render_scene
    from stages.toy.model import ToyDMLLM
    from stages.toy.train import answer_ids, patch_labels

    model = ToyDMLLM.from_pretrained(args.weights)
    blocks = range(min(3, model.config.num_layers - 1))
    rng = np.random.default_rng(args.seed)
    hits: dict[tuple[int, str], list[bool]] = {}
    for _ in range(args.scenes):
        scene = render_scene(rng)
        pixels = model.preprocess(scene.image)
        answer = torch.tensor([answer_ids(model, scene.caption)])
        rank = patch_labels(scene, model.grid)[2]  # 1 + the object's left-to-right index, 0 off objects
        for k in range(len(scene.objects)):
            on_object = rank == k + 1
            for offset in (1, 2):  # the colour and the shape word of object k
                pos = 4 * k + offset
                x = answer.clone()
                x[0, pos:] = model.tokenizer.mask_id
                acts: dict[int, torch.Tensor] = {}

                def keep(block):
                    def hook(module, inputs, out):
                        out.retain_grad()
                        acts[block] = out

                    return hook

                handles = [model.language_model.layers[b].register_forward_hook(keep(b)) for b in blocks]
                prefix, (start, end) = model.embed_prompt(pixels)
                logits, _ = model.lm_forward(torch.cat([prefix, model.embed_tokens(x)], dim=1))
                for h in handles:
                    h.remove()
                logits[0, prefix.shape[1] + pos].log_softmax(-1)[answer[0, pos]].backward()
                for b in blocks:
                    a, g = acts[b][0, start:end].detach(), acts[b].grad[0, start:end]
                    maps = {
                        "gradcam": a @ g.mean(0), "-gradcam": -(a @ g.mean(0)),
                        "gxa": (a * g).sum(-1), "-gxa": -(a * g).sum(-1), "gnorm": g.norm(dim=-1),
                    }
                    for name, m in maps.items():
                        hits.setdefault((b, name), []).append(bool(on_object[int(m.argmax())]))
                model.zero_grad(set_to_none=True)
    print(f"{'block':>5}  " + "  ".join(f"{n:>9}" for n in ("gradcam", "-gradcam", "gxa", "-gxa", "gnorm")))
    for b in blocks:
        print(f"{b:>5}  " + "  ".join(f"{np.mean(hits[(b, n)]):>9.3f}" for n in ("gradcam", "-gradcam", "gxa", "-gxa", "gnorm")))


if __name__ == "__main__":
    main()
