"""Capture one sample: generate, then replay the recorded steps with gradients.

Generation runs the masked-diffusion sampler without gradients and records the
trajectory (token state before every step, unmask step and confidence of every
position). The targets (generated words) are only known once generation ends, so
attribution *replays* the recorded states: for every attribution step s the
step's forward runs again on ``states[s]`` with gradients on and hooks on the
chosen blocks; the forward is the same computation as during sampling (the
capture checks this, ``replay_max_abs_diff``). The gradients of a step's
targets are taken in one batched vector-Jacobian product.

What is recorded follows the selection policy that will read it (``record``):
``all`` replays every step and differentiates every target at it; ``unmask-step``
replays only the steps at which some target was unmasked and differentiates each
target at its own unmask step only, one gradient row per target instead of one
per target and step. The per-sample array ``recorded`` (R, T) says which
(row, target) pairs hold gradient statistics; the others are zero. Token states,
unmask steps, scores and TAM logits stay recorded for every replayed row. In
prefix-cache mode the prefix pass that feeds generation is run with gradients
and reused by the replay, instead of a second prefix pass.

Devices: every tensor handed to the model is on the model's device; results come
back to the host through :func:`to_host`.

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
#: What a capture records: what the ``unmask-step`` selection policy reads, or every (step, target) pair.
RECORD = ("unmask-step", "all")


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
    record: str = "unmask-step"

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


def to_host(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a NumPy array on the host (detached, copied off the device)."""
    return t.detach().cpu().numpy()


def record_plan(targets: Sequence[Target], steps: int, record: str) -> tuple[list[int], np.ndarray]:
    """Which steps to replay and which targets to differentiate at each.

    Parameters
    ----------
    targets : sequence of Target
    steps : int
        Number of denoising steps.
    record : {"unmask-step", "all"}

    Returns
    -------
    attr_steps : list of int
        The replayed steps, ascending (one attribution row each).
    recorded : ndarray of bool, shape (R, T)
        ``recorded[r, t]``: target ``t`` is differentiated at step ``attr_steps[r]``.

    Examples
    --------
    >>> from stages.capture.targets import Target
    >>> ts = [Target(0, "word", "a", (0,), (5,), 2), Target(1, "word", "b", (1,), (6,), 0),
    ...       Target(2, "response", "a b", (0, 1), (5, 6), 2)]
    >>> steps, rec = record_plan(ts, 4, "unmask-step")
    >>> steps, rec.astype(int).tolist()
    ([0, 2], [[0, 1, 0], [1, 0, 1]])
    """
    if record not in RECORD:
        raise DcamError(f"--record must be one of {', '.join(RECORD)}, got {record!r}")
    if record == "all":
        return list(range(steps)), np.ones((steps, len(targets)), dtype=bool)
    attr_steps = sorted({t.unmask_step for t in targets})
    recorded = np.array([[t.unmask_step == s for t in targets] for s in attr_steps], dtype=bool)
    return attr_steps, recorded.reshape(len(attr_steps), len(targets))


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


def _prefix_with_grad(adapter: ModelAdapter, image: np.ndarray, prompt: str | None, layers: Sequence[int]):
    """Prepare the prompt and run the prefix pass with gradients and hooks on ``layers``.

    Returns (prep, cache, prefix logits or None, {layer: hooked hidden state (1, L, D)}): generation
    steps run against this cache without gradients and the replay backpropagates into these hidden states.
    """
    with torch.enable_grad(), BlockRecorder(adapter.blocks(), layers, adapter.block_output) as rec:
        prep = adapter.prepare(image, prompt)
        cache, prefix_logits = adapter.prefix_pass(prep)
        hidden = {r.layer: r.hidden for r in rec.take()}
    return prep, cache, prefix_logits, hidden


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
        ``step_feasible`` (S,), ``attr_steps`` (R,), ``act_row`` (R,), ``recorded`` (R, T) bool,
        ``score`` (R, T), ``tam_logits`` (R, T, N)) and per-layer arrays (``acts`` (F, N, D) fp16,
        ``alpha``, ``alpha_pos`` (R, T, D), ``gxa`` (R, T, N), optionally ``grads`` (R, T, N, D) fp16),
        where N = grid_h * grid_w (grid order), T targets, R attribution rows (the replayed steps,
        ``attr_steps``), F activation rows. Gradient statistics of pairs not ``recorded`` are zero.
    """
    from stages.dmllm.sampler import masked_diffusion_sample

    if config.mode not in MODES:
        raise DcamError(f"--mode must be one of {', '.join(MODES)}, got {config.mode!r}")
    if config.grad_batching not in GRAD_BATCHING:
        raise DcamError(f"grad_batching must be one of {GRAD_BATCHING}, got {config.grad_batching!r}")
    if config.record not in RECORD:
        raise DcamError(f"--record must be one of {', '.join(RECORD)}, got {config.record!r}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    adapter.prepare_for_backward()
    seed = sample_seed(config.seed, sample_id)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    prefix = None
    if config.mode == "prefix-cache":
        prefix = _prefix_with_grad(adapter, image, prompt, config.layers)
        prep, cache = prefix[0], prefix[1]
        logits_fn = lambda x: adapter.answer_logits(prep, cache, x)  # noqa: E731
    else:
        with torch.no_grad():
            prep = adapter.prepare(image, prompt)
        logits_fn = adapter.logits_fn(prep, config.mode)
    with torch.no_grad():
        traj = masked_diffusion_sample(
            logits_fn,
            gen_length=adapter.gen_length,
            mask_id=adapter.mask_id,
            steps=config.steps,
            block_length=config.block_length,
            temperature=config.temperature,
            remasking=config.remasking,
            generator=generator,
            forbid_ids=adapter.forbid_ids,
            device=adapter.device,
        ).to("cpu")
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
        if prefix is None:
            # Prepare again under grad so the image-span activations are in the graph.
            prep = adapter.prepare(image, prompt)
        rows = _replay(adapter, prep, traj, targets, config, prefix=prefix)
    del prefix
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
        "record": config.record,
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
        "recorded": rows["recorded"],
        "score": rows["score"],
        "tam_logits": rows["tam_logits"],
    }
    timings["total"] = time.perf_counter() - t0
    attrs["timings"] = timings
    return SampleCapture(arrays, rows["layer_arrays"], attrs, timings)


def _replay(adapter: ModelAdapter, prep: Prepared, traj, targets: list[Target], config: CaptureConfig, *,
            prefix=None) -> dict:
    """Replay the steps :func:`record_plan` names with gradients (``traj`` on the host).

    ``prefix``: in prefix-cache mode, :func:`_prefix_with_grad`'s output that generation ran against.
    """
    device = adapter.device
    span = prep.span
    grid_abs = torch.as_tensor(span.start + grid_token_index(span), dtype=torch.long, device=device)
    class_ids = torch.as_tensor(target_class_ids(targets), dtype=torch.long, device=device)
    g = adapter.gen_length
    shift = adapter.logit_shift
    p = prep.prompt_len
    layers = config.layers
    attr_steps, recorded = record_plan(targets, config.steps, config.record)
    n_targets, n_grid = len(targets), len(grid_abs)

    acts: dict[int, list[np.ndarray]] = {l: [] for l in layers}
    stats: dict[int, dict[str, list[np.ndarray]]] = {l: {"alpha": [], "alpha_pos": [], "gxa": [], "grads": []} for l in layers}
    scores, tams, act_row, forwards = [], [], [], []
    step_feasible = np.zeros(config.steps, dtype=bool)
    replay_diff = 0.0
    banned = sorted({adapter.mask_id, *adapter.forbid_ids})
    batching = resolve_batching(config.grad_batching, config.mode)

    def feasible(rec) -> bool:
        return rec.seq_len >= span.end

    def add_stats(layer: int, hidden: torch.Tensor, grads: torch.Tensor | None, which: np.ndarray) -> None:
        """Statistics of the gradients (k, 1, L, D) of the targets ``which``; zero rows for the others."""
        d = hidden.shape[-1]
        row = {"alpha": np.zeros((n_targets, d), np.float32), "alpha_pos": np.zeros((n_targets, d), np.float32),
               "gxa": np.zeros((n_targets, n_grid), np.float32)}
        if config.store_grads:
            row["grads"] = np.zeros((n_targets, n_grid, d), np.float16)
        if grads is not None:
            a = hidden[0, grid_abs].detach().float()  # (N, D)
            gr = grads[:, 0, grid_abs].float()  # (k, N, D)
            row["alpha"][which] = to_host(gr.mean(1))
            row["alpha_pos"][which] = to_host(gr.clamp(min=0).mean(1))
            row["gxa"][which] = to_host((gr * a).sum(-1))
            if config.store_grads:
                row["grads"][which] = to_host(gr).astype(np.float16)
        for name, value in row.items():
            stats[layer][name].append(value)

    def check_replay(resp_logits: torch.Tensor, s: int) -> float:
        pos = traj.transfer[s]
        if len(pos) == 0:
            return 0.0
        logits = resp_logits.detach()[pos.to(device)].double()
        logits[..., banned] = float("-inf")  # as the sampler scores confidence
        probs = to_host(torch.softmax(logits, dim=-1))
        ids = traj.final[pos].numpy()
        return float(np.abs(probs[np.arange(len(pos)), ids] - traj.confidence[pos].double().numpy()).max())

    def attribute(s: int, resp: torch.Tensor, hidden: dict[int, torch.Tensor], *, retain_graph: bool) -> None:
        """Scores of every target at step ``s``; gradients of the recorded ones."""
        if config.remasking == "low_confidence":
            nonlocal replay_diff
            replay_diff = max(replay_diff, check_replay(resp, s))
        which = recorded[len(scores)]
        sc = target_scores(resp, targets)
        idx = torch.as_tensor(np.flatnonzero(which), dtype=torch.long, device=device)
        grads = (_vjp(sc[idx], [hidden[l] for l in layers], batching=batching, retain_graph=retain_graph)
                 if which.any() else [None] * len(layers))
        for l, gr in zip(layers, grads):
            add_stats(l, hidden[l], gr, which)
        scores.append(to_host(sc))

    with BlockRecorder(adapter.blocks(), layers, adapter.block_output) as rec:
        if config.mode == "full":
            for s in attr_steps:
                x = traj.states[s].unsqueeze(0).to(device)
                logits = adapter.full_logits(prep, x)
                records = rec.take()
                hidden = {r.layer: r.hidden for r in records}
                forwards.append({"step": s, "kind": "full", "seq_len": records[0].seq_len,
                                 "contains_image_span": all(feasible(r) for r in records)})
                resp = logits[0, p - shift : p - shift + g]
                tams.append(to_host(logits[0, grid_abs][:, class_ids].T))
                attribute(s, resp, hidden, retain_graph=False)
                for l in layers:
                    acts[l].append(to_host(hidden[l][0, grid_abs].float()).astype(np.float16))
                act_row.append(len(act_row))
                del logits, hidden, resp
        else:
            _, cache, prefix_logits, hidden = prefix
            seq_len = hidden[layers[0]].shape[1]
            forwards.append({"step": -1, "kind": "prefix", "seq_len": seq_len,
                             "contains_image_span": seq_len >= span.end})
            if not forwards[-1]["contains_image_span"]:
                raise DcamError("the prefix pass does not contain the whole image span")
            for l in layers:
                acts[l].append(to_host(hidden[l][0, grid_abs].float()).astype(np.float16))
            if prefix_logits is not None:
                tam_row = to_host(prefix_logits[0, grid_abs][:, class_ids].T)
            else:
                tam_row = np.full((n_targets, n_grid), np.nan, dtype=np.float32)
            for s in attr_steps:
                x = traj.states[s].unsqueeze(0).to(device)
                resp = adapter.answer_logits(prep, cache, x)[0]
                records = rec.take()  # none where the answer pass runs other blocks (DiffusionGemma's decoder)
                forwards.append({"step": s, "kind": "answer", "seq_len": records[0].seq_len if records else 0,
                                 "contains_image_span": bool(records) and all(feasible(r) for r in records)})
                tams.append(tam_row)
                attribute(s, resp, hidden, retain_graph=True)
                act_row.append(0)
                del resp
            del cache, hidden
    # Every step's forward of a kind has the same sequence, so a replayed one stands for all of its kind.
    step_feasible[:] = bool(forwards[-1]["contains_image_span"]) if attr_steps else False

    layer_arrays: dict[int, dict[str, np.ndarray]] = {}
    for l in layers:
        la = {"acts": np.stack(acts[l])}
        for name in ("alpha", "alpha_pos", "gxa", *(("grads",) if config.store_grads else ())):
            la[name] = np.stack(stats[l][name])
        layer_arrays[l] = la
    return {
        "layer_arrays": layer_arrays,
        "score": np.stack(scores).astype(np.float32),
        "tam_logits": np.stack(tams).astype(np.float32),
        "attr_steps": np.asarray(attr_steps, dtype=np.int16),
        "act_row": np.asarray(act_row, dtype=np.int16),
        "recorded": recorded,
        "step_feasible": step_feasible,
        "forwards": forwards,
        "replay_max_abs_diff": replay_diff,
    }
