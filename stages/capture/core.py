"""Capture one sample: generate, then replay the feasible steps with gradients.

Generation runs the masked-diffusion sampler without gradients and records the
trajectory (token state before every step, unmask step and confidence of every
position). The targets (generated words) are only known once generation ends, so
attribution *replays* the recorded states: for every attribution step s the
step's forward runs again on ``states[s]`` with gradients on and hooks on the
chosen blocks; the forward is the same computation as during sampling (the
capture checks this, ``replay_max_abs_diff``). The gradients of all targets'
scores are taken in one batched vector-Jacobian product.

Feasibility (``method.md`` §1.2): a hooked forward is feasible when its sequence
contains the whole image span. In ``full`` mode (LLaDA-V, MMaDA) every step's
forward is. In ``prefix-cache`` mode (LaViDa Prefix-DLM) only the prefix pass is:
steps run the response alone against the cached keys and values, so each step's
score is backpropagated *through the cache* into the prefix pass's image-span
activations, which all steps share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from schemas.errors import DcamError
from schemas.span import grid_token_index
from stages.capture.adapter import ModelAdapter, Prepared
from stages.capture.hooks import BlockRecorder
from stages.capture.targets import Target, build_targets, target_class_ids, target_scores

MODES = ("full", "prefix-cache")
GRAD_BATCHING = ("auto", "vmap", "loop")


@dataclass(frozen=True)
class CaptureConfig:
    """Everything that determines a capture's content (recorded in the store)."""

    layers: tuple[int, ...]
    steps: int
    block_length: int
    mode: str = "full"
    seed: int = 0
    temperature: float = 0.0
    remasking: str = "low_confidence"
    score: str = "logit"
    store_grads: bool = False
    grad_batching: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class SampleCapture:
    """Arrays and attributes of one captured sample, ready for :meth:`CaptureStore.write_sample`."""

    arrays: dict[str, np.ndarray]
    layer_arrays: dict[int, dict[str, np.ndarray]]
    attrs: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def resolve_layers(adapter: ModelAdapter, layers: Sequence[int] | None) -> tuple[int, ...]:
    """Validate hook layers (negative indices allowed); default: the middle block."""
    n = len(adapter.blocks())
    if not layers:
        return ((n - 1) // 2,)
    out = []
    for layer in layers:
        idx = layer + n if layer < 0 else layer
        if not 0 <= idx < n:
            raise DcamError(f"--layers: block {layer} does not exist; the model has blocks 0..{n - 1}")
        if idx == n - 1:
            raise DcamError(
                f"--layers: block {layer} is the last block; its image positions feed no response logit, so "
                f"their gradient is exactly zero. Hook an earlier block (0..{n - 2}; default {(n - 1) // 2})"
            )
        out.append(idx)
    return tuple(sorted(set(out)))


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-sample seed that does not depend on the order or subset of samples."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def resolve_batching(batching: str, mode: str) -> str:
    """``auto``: one batched VJP (``vmap``) in full mode; one backward per target (``loop``) in
    prefix-cache mode, where the batched backward through the cached keys and values measured
    about 16x slower than the loop on CPU (``benchmarks/bench_capture.py``)."""
    if batching != "auto":
        return batching
    return "vmap" if mode == "full" else "loop"


def _vjp(scores: torch.Tensor, inputs: list[torch.Tensor], *, batching: str, retain_graph: bool) -> list[torch.Tensor]:
    """Gradients of every score w.r.t. every input: one (T, *input.shape) tensor per input."""
    t = scores.shape[0]
    if batching == "vmap":
        eye = torch.eye(t, dtype=scores.dtype, device=scores.device)
        return list(torch.autograd.grad(scores, inputs, grad_outputs=eye, is_grads_batched=True, retain_graph=retain_graph))
    per_target = [
        torch.autograd.grad(scores[i], inputs, retain_graph=retain_graph or i < t - 1) for i in range(t)
    ]
    return [torch.stack([g[j] for g in per_target]) for j in range(len(inputs))]


def capture_sample(
    adapter: ModelAdapter,
    image: np.ndarray,
    config: CaptureConfig,
    *,
    sample_id: str,
    prompt: str | None = None,
) -> SampleCapture:
    """Generate a response for ``image`` and capture activations and gradient statistics.

    Parameters
    ----------
    adapter : ModelAdapter
    image : ndarray of shape (H, W, 3), uint8
    config : CaptureConfig
    sample_id : str
        Used for the per-sample seed.

    Returns
    -------
    SampleCapture
        Per-sample arrays (``tokens`` (S+1, G), ``unmask_step`` (G,), ``confidence`` (G,),
        ``step_feasible`` (S,), ``attr_steps`` (R,), ``act_row`` (R,), ``score`` (R, T),
        ``tam_logits`` (R, T, N)) and per-layer arrays (``acts`` (F, N, D) fp16, ``alpha``,
        ``alpha_pos`` (R, T, D), ``gxa`` (R, T, N), optionally ``grads`` (R, T, N, D) fp16), where
        N = grid_h * grid_w (grid order), T targets, R attribution rows, F activation rows.
    """
    from stages.dmllm.sampler import masked_diffusion_sample

    if config.mode not in MODES:
        raise DcamError(f"--mode must be one of {', '.join(MODES)}, got {config.mode!r}")
    if config.grad_batching not in GRAD_BATCHING:
        raise DcamError(f"grad_batching must be one of {GRAD_BATCHING}, got {config.grad_batching!r}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    adapter.prepare_for_backward()
    seed = sample_seed(config.seed, sample_id)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    with torch.no_grad():
        prep = adapter.prepare(image, prompt)
        traj = masked_diffusion_sample(
            adapter.logits_fn(prep, config.mode),
            gen_length=adapter.gen_length,
            mask_id=adapter.mask_id,
            steps=config.steps,
            block_length=config.block_length,
            temperature=config.temperature,
            remasking=config.remasking,
            generator=generator,
            forbid_ids=adapter.forbid_ids,
        )
    timings["generate"] = time.perf_counter() - t0

    final = traj.final.tolist()
    unmask = traj.unmask_step.tolist()
    words = adapter.word_groups(final)
    text = adapter.decode(final)
    targets = build_targets(words, final, unmask, score=config.score, response_text=text)
    if not targets:
        raise DcamError("the model generated no words (empty response); nothing to explain")

    t1 = time.perf_counter()
    with torch.enable_grad():
        # Prepare again under grad so the image-span activations are in the graph.
        prep = adapter.prepare(image, prompt)
        rows = _replay(adapter, prep, traj, targets, config)
    timings["attribute"] = time.perf_counter() - t1

    span = prep.span
    attrs = {
        "status": "ok",
        "prompt": prompt if prompt else adapter.default_prompt(),
        "generated_text": text,
        "generated_ids": final,
        "words": [w for w, _ in words],
        "targets": [t.to_dict() for t in targets],
        "span": span.model_dump(),
        "layers": list(config.layers),
        "mode": config.mode,
        "steps": config.steps,
        "block_length": config.block_length,
        "score_kind": config.score,
        "sample_seed": seed,
        "forwards": rows["forwards"],
        "replay_max_abs_diff": rows["replay_max_abs_diff"],
        "family": adapter.family,
    }
    arrays = {
        "tokens": traj.states.numpy().astype(np.int32),
        "unmask_step": traj.unmask_step.numpy().astype(np.int16),
        "confidence": traj.confidence.float().numpy().astype(np.float32),
        "step_feasible": rows["step_feasible"],
        "attr_steps": rows["attr_steps"],
        "act_row": rows["act_row"],
        "score": rows["score"],
        "tam_logits": rows["tam_logits"],
    }
    timings["total"] = time.perf_counter() - t0
    attrs["timings"] = timings
    return SampleCapture(arrays, rows["layer_arrays"], attrs, timings)


def _replay(adapter: ModelAdapter, prep: Prepared, traj, targets: list[Target], config: CaptureConfig) -> dict:
    span = prep.span
    grid_abs = torch.as_tensor(span.start + grid_token_index(span), dtype=torch.long)
    class_ids = torch.as_tensor(target_class_ids(targets), dtype=torch.long)
    steps = config.steps
    g = adapter.gen_length
    shift = adapter.logit_shift
    p = prep.prompt_len
    layers = config.layers
    blocks = adapter.blocks()

    acts: dict[int, list[np.ndarray]] = {l: [] for l in layers}
    stats: dict[int, dict[str, list[np.ndarray]]] = {l: {"alpha": [], "alpha_pos": [], "gxa": [], "grads": []} for l in layers}
    scores, tams, attr_steps, act_row, forwards = [], [], [], [], []
    step_feasible = np.zeros(steps, dtype=bool)
    replay_diff = 0.0
    banned = sorted({adapter.mask_id, *adapter.forbid_ids})
    batching = resolve_batching(config.grad_batching, config.mode)

    def feasible(rec) -> bool:
        return rec.seq_len >= span.end

    def add_stats(layer: int, hidden: torch.Tensor, grads: torch.Tensor) -> None:
        a = hidden[0, grid_abs].detach().float()  # (N, D)
        gr = grads[:, 0, grid_abs].float()  # (T, N, D)
        stats[layer]["alpha"].append(gr.mean(1).numpy())
        stats[layer]["alpha_pos"].append(gr.clamp(min=0).mean(1).numpy())
        stats[layer]["gxa"].append((gr * a).sum(-1).numpy())
        if config.store_grads:
            stats[layer]["grads"].append(gr.numpy().astype(np.float16))

    def check_replay(resp_logits: torch.Tensor, s: int) -> float:
        pos = traj.transfer[s]
        if len(pos) == 0:
            return 0.0
        logits = resp_logits.detach().double().clone()
        logits[..., banned] = float("-inf")  # as the sampler scores confidence
        probs = torch.softmax(logits, dim=-1)
        ids = traj.final[pos]
        return float((probs[pos, ids] - traj.confidence[pos].double()).abs().max())

    with BlockRecorder(blocks, layers, adapter.block_output) as rec:
        if config.mode == "full":
            for s in range(steps):
                x = traj.states[s].unsqueeze(0)
                logits = adapter.full_logits(prep, x)
                records = rec.take()
                hidden = {r.layer: r.hidden for r in records}
                forwards.append({"step": s, "kind": "full", "seq_len": records[0].seq_len,
                                 "contains_image_span": all(feasible(r) for r in records)})
                step_feasible[s] = forwards[-1]["contains_image_span"]
                resp = logits[0, p - shift : p - shift + g]
                if config.remasking == "low_confidence":
                    replay_diff = max(replay_diff, check_replay(resp, s))
                sc = target_scores(resp, targets)
                grads = _vjp(sc, [hidden[l] for l in layers], batching=batching, retain_graph=False)
                for l, gr in zip(layers, grads):
                    acts[l].append(hidden[l][0, grid_abs].detach().float().numpy().astype(np.float16))
                    add_stats(l, hidden[l], gr)
                scores.append(sc.detach().numpy())
                tams.append(logits[0, grid_abs][:, class_ids].detach().T.numpy())
                attr_steps.append(s)
                act_row.append(len(attr_steps) - 1)
                del logits, hidden, grads, sc
        else:
            cache, prefix_logits = adapter.prefix_pass(prep)
            records = rec.take()
            hidden = {r.layer: r.hidden for r in records}
            forwards.append({"step": -1, "kind": "prefix", "seq_len": records[0].seq_len,
                             "contains_image_span": all(feasible(r) for r in records)})
            if not forwards[-1]["contains_image_span"]:
                raise DcamError("the prefix pass does not contain the whole image span")
            for l in layers:
                acts[l].append(hidden[l][0, grid_abs].detach().float().numpy().astype(np.float16))
            if prefix_logits is not None:
                tam_row = prefix_logits[0, grid_abs][:, class_ids].detach().T.numpy()
            else:
                tam_row = np.full((len(targets), len(grid_abs)), np.nan, dtype=np.float32)
            for s in range(steps):
                x = traj.states[s].unsqueeze(0)
                resp = adapter.answer_logits(prep, cache, x)[0]
                records = rec.take()  # none where the answer pass runs other blocks (DiffusionGemma's decoder)
                forwards.append({"step": s, "kind": "answer", "seq_len": records[0].seq_len if records else 0,
                                 "contains_image_span": bool(records) and all(feasible(r) for r in records)})
                step_feasible[s] = forwards[-1]["contains_image_span"]
                if config.remasking == "low_confidence":
                    replay_diff = max(replay_diff, check_replay(resp, s))
                sc = target_scores(resp, targets)
                grads = _vjp(sc, [hidden[l] for l in layers], batching=batching, retain_graph=True)
                for l, gr in zip(layers, grads):
                    add_stats(l, hidden[l], gr)
                scores.append(sc.detach().numpy())
                tams.append(tam_row)
                attr_steps.append(s)
                act_row.append(0)
                del resp, grads, sc
            del cache, hidden

    layer_arrays: dict[int, dict[str, np.ndarray]] = {}
    for l in layers:
        la = {
            "acts": np.stack(acts[l]),
            "alpha": np.stack(stats[l]["alpha"]).astype(np.float32),
            "alpha_pos": np.stack(stats[l]["alpha_pos"]).astype(np.float32),
            "gxa": np.stack(stats[l]["gxa"]).astype(np.float32),
        }
        if config.store_grads:
            la["grads"] = np.stack(stats[l]["grads"])
        layer_arrays[l] = la
    return {
        "layer_arrays": layer_arrays,
        "score": np.stack(scores).astype(np.float32),
        "tam_logits": np.stack(tams).astype(np.float32),
        "attr_steps": np.asarray(attr_steps, dtype=np.int16),
        "act_row": np.asarray(act_row, dtype=np.int16),
        "step_feasible": step_feasible,
        "forwards": forwards,
        "replay_max_abs_diff": replay_diff,
    }
