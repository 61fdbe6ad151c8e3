"""Capture vs plain generation at LaViDa-LLaDA scale (random weights): seconds, peak GPU memory, bytes stored.

Builds the LaViDa-LLaDA replica (:mod:`stages.capture.replicas`) at the real model's size - 32 LLaDA
blocks, hidden 4096, SwiGLU 12288, vocab 126464, SigLIP-so400m tower (27 layers, 1152 wide, 384 px,
patch 14), bf16 - so a 768x768 image gives the paper's layout (base 14x14 + 28x28 grid with 28 newline
tokens = 1,008 image tokens). One sample: plain generation (the sampler alone, no gradients) and a
capture (generation + gradient replay of every step) side by side, in the same process and device.

    python benchmarks/lavida_scale.py --estimate          # analytic FLOPs / memory / bytes, any machine
    python benchmarks/lavida_scale.py                     # on a GPU (>= 40 GB)
    python benchmarks/lavida_scale.py --tiny              # the same run on the tiny replica (CPU smoke test)

Never gates CI; prints ratios measured side by side.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass
class Scale:
    """The dimensions the estimate and the GPU run use."""

    layers: int = 32
    d_model: int = 4096
    mlp_hidden: int = 12288
    vocab: int = 126464
    base_tokens: int = 196  # 14x14 pooled base view
    grid: tuple[int, int] = (28, 28)  # 2x2 views of 14x14, square image: no unpad crop
    text_tokens: int = 40  # chat template + question around the image
    gen_length: int = 64
    steps: int = 32
    targets: int = 16  # words of a 64-token answer + the whole response
    hooked_layer: int = 10  # the official code's default
    hooked_layers: int = 1
    vision_params: float = 0.43e9  # SigLIP-so400m

    @property
    def image_tokens(self) -> int:
        h, w = self.grid
        return self.base_tokens + h * (w + 1)

    @property
    def prompt(self) -> int:
        return self.image_tokens + self.text_tokens

    @property
    def block_params(self) -> int:
        return 4 * self.d_model**2 + 3 * self.d_model * self.mlp_hidden  # q, k, v, out (no GQA); SwiGLU

    @property
    def params(self) -> float:
        return self.layers * self.block_params + 2 * self.vocab * self.d_model + self.vision_params


def _fwd(s: Scale, n_q: int, n_kv: int, layers: int | None = None, head: bool = True) -> float:
    """Forward FLOPs of ``n_q`` query tokens against ``n_kv`` keys through ``layers`` blocks (+ LM head)."""
    layers = s.layers if layers is None else layers
    blocks = layers * (2 * n_q * s.block_params + 4 * n_q * n_kv * s.d_model)
    return blocks + (2 * n_q * s.d_model * s.vocab if head else 0)


def estimate(s: Scale) -> dict[str, float]:
    """Analytic cost of one sample in prefix-cache mode (LaViDa's default) and full mode.

    Backward passes take gradients with respect to hidden states only (no weight gradients), which costs
    about one forward of the same span; each of the ``targets`` scores is one vector-Jacobian product per
    step, through the answer pass and, via the cached keys/values, the prefix blocks above the hooked layer.
    """
    p, g, n_steps, t = s.prompt, s.gen_length, s.steps, s.targets
    above = s.layers - s.hooked_layer - 1
    vision = 2 * 5 * 729 * s.vision_params  # 5 views of 27x27 patches
    gen_prefix = vision + _fwd(s, p, p) + n_steps * _fwd(s, g, p + g)
    gen_full = vision + n_steps * _fwd(s, p + g, p + g)
    replay_prefix = vision + _fwd(s, p, p) + n_steps * (
        _fwd(s, g, p + g) + t * (_fwd(s, g, p + g) + _fwd(s, p, p, layers=above, head=False))
    )
    replay_full = vision + n_steps * (_fwd(s, p + g, p + g) + t * _fwd(s, p + g, p + g, layers=above))

    bf16, f16, f32 = 2, 2, 4
    weights = s.params * bf16
    kv_cache = 2 * s.layers * (p + g) * s.d_model * bf16
    # Saved for backward per token and block: ~8 d-wide + 4 mlp-wide tensors (norms, q/k/v, attention, SwiGLU).
    saved_per_token = s.layers * (8 * s.d_model + 4 * s.mlp_hidden) * bf16
    logits = lambda n: n * s.vocab * f32  # noqa: E731
    mem_gen = weights + kv_cache + logits(p)
    # vmap over the T targets: batched gradients of the hidden state plus one block's batched SwiGLU transients.
    batched = t * (p + g) * (2 * s.d_model * f32 + 3 * s.mlp_hidden * bf16)
    mem_capture_prefix = weights + p * saved_per_token + logits(p) + batched
    mem_capture_full = weights + (p + g) * saved_per_token + logits(p + g) + batched

    n = s.grid[0] * s.grid[1]
    r, d, lay = n_steps, s.d_model, s.hooked_layers
    per_layer_stats = 2 * r * t * d * f32 + r * t * n * f32  # alpha, alpha_pos (R, T, D) + gxa (R, T, N)
    per_sample = (n_steps + 1) * g * 4 + g * (2 + 4) + r * t * f32 + r * t * n * f32  # tokens, steps, score, tam
    stored_prefix = per_sample + lay * (1 * n * d * f16 + per_layer_stats)  # acts (F=1, N, D)
    stored_full = per_sample + lay * (n_steps * n * d * f16 + per_layer_stats)  # acts (F=S, N, D)
    return dict(
        params=s.params, gen_prefix=gen_prefix, gen_full=gen_full, capture_prefix=gen_prefix + replay_prefix,
        capture_full=gen_full + replay_full, mem_gen=mem_gen, mem_capture_prefix=mem_capture_prefix,
        mem_capture_full=mem_capture_full, stored_prefix=stored_prefix, stored_full=stored_full,
        acts_prefix=lay * n * d * f16, stats=lay * per_layer_stats,
    )


def print_estimate(s: Scale, tflops: float) -> None:
    e = estimate(s)
    gb, mb, pf = 1e9, 1e6, 1e15
    print(f"LaViDa-LLaDA scale: {e['params'] / 1e9:.2f} B params (bf16), {s.layers} blocks x {s.d_model}, "
          f"vocab {s.vocab}; prompt {s.prompt} tokens ({s.image_tokens} image: base {s.base_tokens} + "
          f"{s.grid[0]}x{s.grid[1]} grid + {s.grid[0]} newlines), {s.gen_length} new tokens, {s.steps} steps, "
          f"{s.targets} targets, hook block {s.hooked_layer}")
    print(f"{'':28s}{'PFLOP':>8s}{f's @ {tflops:.0f} TFLOP/s':>16s}{'peak GB':>10s}{'stored MB':>11s}")
    rows = [
        ("generation, prefix-cache", e["gen_prefix"], e["mem_gen"], 0.0),
        ("capture, prefix-cache", e["capture_prefix"], e["mem_capture_prefix"], e["stored_prefix"]),
        ("generation, full", e["gen_full"], e["mem_gen"], 0.0),
        ("capture, full", e["capture_full"], e["mem_capture_full"], e["stored_full"]),
    ]
    for name, flops, mem, stored in rows:
        print(f"{name:28s}{flops / pf:8.2f}{flops / (tflops * 1e12):16.1f}{mem / gb:10.1f}{stored / mb:11.1f}")
    print(f"capture / generation: {e['capture_prefix'] / e['gen_prefix']:.1f}x FLOPs (prefix-cache), "
          f"{e['capture_full'] / e['gen_full']:.1f}x (full)")
    print(f"stored per sample and hooked layer: acts fp16 (F, {s.grid[0] * s.grid[1]}, {s.d_model}) = "
          f"{e['acts_prefix'] / mb:.1f} MB per activation row (F = 1 prefix-cache, {s.steps} full); "
          f"alpha + alpha_pos fp32 ({s.steps}, {s.targets}, {s.d_model}) + gxa fp32 ({s.steps}, {s.targets}, "
          f"{s.grid[0] * s.grid[1]}) = {e['stats'] / mb:.1f} MB")


# ================================================================================ measured run
def build(tiny: bool, device: str):
    import torch

    from stages.capture.families import WordCodec
    from stages.capture.families.lavida import LavidaLladaAdapter
    from stages.capture.replicas import LavidaLladaReplica, OlmoLladaConfig, VisionSpec, replica_tokenizer

    tok = replica_tokenizer()
    codec = WordCodec(tok)
    if tiny:
        model = LavidaLladaReplica(len(tok))
        vocab = len(tok)
    else:
        s = Scale()
        vocab = s.vocab
        spec = VisionSpec(view_size=384, patch_size=14, hidden_size=1152, num_layers=27, num_heads=16,
                          intermediate_size=4304)
        trunk = OlmoLladaConfig(vocab_size=s.vocab, d_model=s.d_model, n_heads=32, n_layers=s.layers,
                                mlp_hidden_size=s.mlp_hidden)
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(device):
            model = LavidaLladaReplica(len(tok), spec=spec, trunk=trunk)
        torch.set_default_dtype(torch.float32)
    model = model.to(device).eval()
    # Random weights: keep the response inside the replica's word vocabulary so it has words to explain.
    forbid = sorted((set(codec.special) - {tok.eos_id}) | set(range(len(tok), vocab)))
    return LavidaLladaAdapter(model, codec, mask_id=tok.mask_id, eos_id=tok.eos_id,
                              gen_length=16 if tiny else Scale.gen_length, forbid_ids=forbid)


def measure(tiny: bool, layer: int, steps: int) -> None:
    import numpy as np
    import torch

    from stages.capture.core import CaptureConfig, capture_sample, sample_seed
    from stages.dmllm.sampler import masked_diffusion_sample

    device = "cuda" if not tiny else "cpu"
    adapter = build(tiny, device)
    size = 768 if not tiny else 72
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    cfg = CaptureConfig(layers=(layer,), steps=steps, block_length=adapter.gen_length, mode="prefix-cache")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def peak_reset():
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak() -> float:
        return torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else float("nan")

    results = {}
    for name in ("generation", "capture", "generation", "capture"):  # second round is the measured one
        peak_reset()
        sync()
        t0 = time.perf_counter()
        if name == "generation":
            with torch.no_grad():
                adapter.prepare_for_backward()
                prep = adapter.prepare(image)
                masked_diffusion_sample(
                    adapter.logits_fn(prep, cfg.mode), gen_length=adapter.gen_length, mask_id=adapter.mask_id,
                    steps=cfg.steps, block_length=cfg.block_length, forbid_ids=adapter.forbid_ids,
                    generator=torch.Generator().manual_seed(sample_seed(0, "bench")), device=adapter.device,
                )
            stored = 0
        else:
            cap = capture_sample(adapter, image, cfg, sample_id="bench")
            stored = sum(a.nbytes for a in cap.arrays.values()) + sum(
                a.nbytes for la in cap.layer_arrays.values() for a in la.values()
            )
        sync()
        results[name] = (time.perf_counter() - t0, peak(), stored)
    span = adapter.prepare(image).span
    print(f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu (tiny replica)'}; image tokens "
          f"{span.n_tokens} (base {span.base_tokens}, grid {span.grid_h}x{span.grid_w} + newlines); "
          f"{adapter.gen_length} new tokens, {steps} steps, hook block {layer}")
    for name, (sec, mem, stored) in results.items():
        print(f"{name:12s} {sec:8.2f} s/sample   peak {mem:6.1f} GB   stored {stored / 1e6:8.2f} MB")
    print(f"capture / generation: {results['capture'][0] / results['generation'][0]:.1f}x time")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--estimate", action="store_true", help="print the analytic estimate and exit")
    ap.add_argument("--tiny", action="store_true", help="run on the tiny replica (CPU is fine)")
    ap.add_argument("--tflops", type=float, default=400.0, help="sustained bf16 TFLOP/s for the estimate")
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--steps", type=int, default=32)
    args = ap.parse_args(argv)
    if args.estimate:
        print_estimate(Scale(steps=args.steps, hooked_layer=args.layer), args.tflops)
        return 0
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("lavida_scale: no CUDA device here; the 8B-class run needs a GPU with >= 40 GB. "
              "Use --estimate for the analytic numbers or --tiny for a CPU smoke run.", file=sys.stderr)
        return 2
    measure(args.tiny, 1 if args.tiny else args.layer, 4 if args.tiny else args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
