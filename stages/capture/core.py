"""Capture one sample: generate, then replay the recorded steps with gradients.

Generation runs the family's sampler (masked diffusion, or DiffusionGemma's
uniform-noise one with self-conditioning, ``adapter.sampler``) and records the
trajectory (token state before every step, unmask step and confidence of every
position, and the self-conditioning input of every step where there is one). The targets (generated words) are only known once generation ends, so
attribution *replays* the recorded states: for every attribution step s the
step's forward runs again on ``states[s]`` with gradients on and hooks on the
chosen blocks; the forward is the same computation as during sampling (the
capture checks this, ``replay_max_abs_diff``). The gradients of a step's
targets are taken in one batched vector-Jacobian product.

Where it is cheaper, the replay has no second forward: the weights are frozen
during a capture, so a step's graph starts at the first hooked block (the hook
makes its output a leaf) and holds only the blocks above it; generation runs its
steps with that graph on and keeps it, while the kept graphs fit in
``graph_budget`` bytes (counted from the tensors autograd saves, plus the kept
logits), and the replay backpropagates through the kept graph of a step instead
of running the step again. Steps beyond the budget are replayed.

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

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from schemas.errors import DcamError
from schemas.span import grid_token_index
from stages.basemaps import default_reductions, get_reduction
from stages.basemaps.reductions import GRADS, Reduction
from stages.capture.adapter import ModelAdapter, Prepared
from stages.capture.hooks import BlockRecorder, frozen_weights
from stages.capture.targets import Target, build_targets, target_class_ids, target_scores

MODES = ("full", "prefix-cache")
GRAD_BATCHING = ("auto", "vmap", "loop")
#: What a capture records: what the ``unmask-step`` selection policy reads, or every (step, target) pair.
RECORD = ("unmask-step", "all")
#: Bytes of step graphs that generation may keep for the replay (see the module docstring).
GRAPH_BUDGET = 2 << 30


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
    schedule: str = "even"
    top_p: float = 1.0
    score: str = "logit"
    store_grads: bool = False
    grad_batching: str = "auto"
    record: str = "unmask-step"
    #: Names of the gradient reductions to store (:mod:`stages.basemaps.reductions`), besides ``grads``
    #: (``store_grads``); default: those of every registered base method. Kept sorted and unique.
    reductions: tuple[str, ...] = field(default_factory=default_reductions)

    def __post_init__(self) -> None:
        names = tuple(sorted(set(self.reductions)))
        for name in names:
            if name == GRADS.name:
                raise DcamError("reductions: the full gradient 'grads' is stored with store_grads (--store-grads), "
                                "not listed as a reduction")
            try:
                get_reduction(name)
            except ValueError as e:
                raise DcamError(f"reductions: {e}") from None
        object.__setattr__(self, "reductions", names)

    def stored_reductions(self) -> tuple[Reduction, ...]:
        """The reductions a capture with this config stores per layer: ``reductions``, and ``grads`` with
        ``store_grads``."""
        return tuple(get_reduction(n) for n in (*self.reductions, *((GRADS.name,) if self.store_grads else ())))

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class SampleCapture:
    """Arrays and attributes of one captured sample, ready for :meth:`CaptureStore.write_sample`."""

    arrays: dict[str, np.ndarray]
    layer_arrays: dict[int, dict[str, np.ndarray]]
    attrs: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


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


@dataclass
class _Step:
    """One step's hooked forward: response logits (G, V) and the logits at the grid tokens (N, V) or None
    (prefix-cache: TAM reads the prefix pass), in the graph, and the hooked blocks' records."""

    resp: torch.Tensor
    grid_logits: torch.Tensor | None
    records: list

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.resp, self.grid_logits) if t is not None)


@contextlib.contextmanager
def _saved_bytes(exclude: set[int]) -> Iterator[list[int]]:
    """Count the bytes of the tensors autograd saves inside the block (each storage once; ``exclude``:
    storages that exist anyway, the weights). Yields a one-element list holding the count."""
    seen, total = set(exclude), [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


class _StepForward:
    """A step's hooked forward on the answer state ``x`` (1, G): a full pass, or an answer pass against the
    prefix cache."""

    def __init__(self, adapter: ModelAdapter, prep: Prepared, mode: str, rec: BlockRecorder, cache: Any,
                 grid_abs: torch.Tensor):
        self.adapter, self.prep, self.mode, self.rec, self.cache = adapter, prep, mode, rec, cache
        start = prep.prompt_len - adapter.logit_shift
        self.resp_idx = torch.arange(start, start + adapter.gen_length, device=grid_abs.device)
        self.grid_abs = grid_abs

    def __call__(self, x: torch.Tensor, conditioning: torch.Tensor | None = None) -> _Step:
        kw = {"conditioning": conditioning} if self.adapter.sampler == "uniform-noise" else {}
        if self.mode == "full":
            logits = self.adapter.full_logits(self.prep, x, **kw)
            # Index copies, so the whole (P + G, V) logits are not kept alive.
            return _Step(logits[0, self.resp_idx], logits[0, self.grid_abs], self.rec.take())
        return _Step(self.adapter.answer_logits(self.prep, self.cache, x, **kw)[0], None, self.rec.take())


class _KeepingLogits:
    """The sampler's ``logits_fn``: runs each step's hooked forward with its graph and keeps it for the replay
    while the kept graphs fit in ``budget`` bytes; past that, runs without a graph."""

    def __init__(self, forward: _StepForward, budget: int, weights: set[int]):
        self.forward, self.budget, self.weights = forward, budget, weights
        self.kept: dict[int, _Step] = {}
        self.calls = 0

    def __call__(self, x: torch.Tensor, conditioning: torch.Tensor | None = None) -> torch.Tensor:
        step = self.calls
        self.calls += 1
        if self.budget <= 0:
            return self.forward(x, conditioning).resp.unsqueeze(0)
        with torch.enable_grad(), _saved_bytes(self.weights) as saved:
            out = self.forward(x, conditioning)
        size = saved[0] + out.nbytes
        if size <= self.budget:
            self.kept[step] = out
            self.budget -= size
        else:
            self.budget = 0
        return out.resp.detach().unsqueeze(0)


def capture_sample(
    adapter: ModelAdapter,
    image: np.ndarray,
    config: CaptureConfig,
    *,
    sample_id: str,
    prompt: str | None = None,
    graph_budget: int = GRAPH_BUDGET,
) -> SampleCapture:
    """Generate a response for ``image`` and capture activations and gradient statistics.

    Parameters
    ----------
    adapter : ModelAdapter
    image : ndarray of shape (H, W, 3), uint8
    config : CaptureConfig
    sample_id : str
        Used for the per-sample seed.
    prompt : str, optional
        The dataset's prompt (default: the adapter's).
    graph_budget : int
        Bytes of step graphs generation may keep so the replay needs no second forward (module docstring);
        0 replays every recorded step. Changes the cost, never the content.

    Returns
    -------
    SampleCapture
        Per-sample arrays (``tokens`` (S+1, G), ``unmask_step`` (G,), ``confidence`` (G,),
        ``step_feasible`` (S,), ``attr_steps`` (R,), ``act_row`` (R,), ``recorded`` (R, T) bool,
        ``score`` (R, T), ``tam_logits`` (R, T, N)) and per-layer arrays (``acts`` (F, N, D) fp16 and the
        configured gradient reductions, ``config.stored_reductions()``, e.g. ``alpha`` (R, T, D), ``gxa``
        (R, T, N), ``grads`` (R, T, N, D) fp16 with ``store_grads``), where N = grid_h * grid_w (grid order), T targets, R attribution rows (the replayed steps,
        ``attr_steps``), F activation rows. Gradient statistics of pairs not ``recorded`` are zero.
    """
    if config.mode not in MODES:
        raise DcamError(f"--mode must be one of {', '.join(MODES)}, got {config.mode!r}")
    if config.grad_batching not in GRAD_BATCHING:
        raise DcamError(f"grad_batching must be one of {GRAD_BATCHING}, got {config.grad_batching!r}")
    if config.record not in RECORD:
        raise DcamError(f"--record must be one of {', '.join(RECORD)}, got {config.record!r}")
    adapter.prepare_for_backward()
    with frozen_weights(adapter.model), BlockRecorder(adapter.blocks(), config.layers, adapter.block_output) as rec:
        return _capture(adapter, image, config, rec, sample_id=sample_id, prompt=prompt, graph_budget=graph_budget)


def _capture(adapter: ModelAdapter, image: np.ndarray, config: CaptureConfig, rec: BlockRecorder, *,
             sample_id: str, prompt: str | None, graph_budget: int) -> SampleCapture:
    from stages.dmllm.sampler import masked_diffusion_sample
    from stages.dmllm.uniform import uniform_noise_sample

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    seed = sample_seed(config.seed, sample_id)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    device = adapter.device

    with torch.no_grad():
        prep = adapter.prepare(image, prompt)
    span = prep.span
    grid_abs = torch.as_tensor(span.start + grid_token_index(span), dtype=torch.long, device=device)
    prefix = None
    if config.mode == "prefix-cache":
        with torch.enable_grad():  # the graph starts at the hooked blocks of the prefix pass
            cache, prefix_logits = adapter.prefix_pass(prep)
        prefix = (cache, prefix_logits, {r.layer: r.hidden for r in rec.take()})
    forward = _StepForward(adapter, prep, config.mode, rec, prefix[0] if prefix else None, grid_abs)
    weights = {p.untyped_storage().data_ptr() for p in adapter.model.parameters()}
    logits_fn = _KeepingLogits(forward, graph_budget, weights)
    if adapter.sampler == "uniform-noise":
        traj = uniform_noise_sample(logits_fn, gen_length=adapter.gen_length, vocab_size=adapter.vocab_size,
                                    steps=config.steps, generator=generator, device=device).to("cpu")
    else:
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
            device=device,
            schedule=config.schedule,
            top_p=config.top_p,
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
        rows = _replay(adapter, forward, traj, targets, config, kept=logits_fn.kept, prefix=prefix)
    del prefix, logits_fn
    timings["attribute"] = time.perf_counter() - t1

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
        "reductions": [r.name for r in config.stored_reductions()],
        "sampler": adapter.sampler,
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


def _replay(adapter: ModelAdapter, forward: _StepForward, traj, targets: list[Target], config: CaptureConfig, *,
            kept: dict[int, _Step], prefix=None) -> dict:
    """Differentiate the (step, target) pairs :func:`record_plan` names (``traj`` on the host).

    ``kept``: step graphs generation kept (used, and dropped, instead of a second forward); ``prefix``: in
    prefix-cache mode, (cache, prefix logits, {layer: hooked hidden}) of the prefix pass generation ran against.
    """
    device = adapter.device
    span = forward.prep.span
    grid_abs = forward.grid_abs
    class_ids = torch.as_tensor(target_class_ids(targets), dtype=torch.long, device=device)
    layers = config.layers
    attr_steps, recorded = record_plan(targets, config.steps, config.record)
    for s in set(kept) - set(attr_steps):
        del kept[s]
    n_targets, n_grid = len(targets), len(grid_abs)

    reductions = config.stored_reductions()
    acts: dict[int, list[np.ndarray]] = {l: [] for l in layers}
    stats: dict[int, dict[str, list[np.ndarray]]] = {l: {r.name: [] for r in reductions} for l in layers}
    scores, tams, act_row, forwards = [], [], [], []
    step_feasible = np.zeros(config.steps, dtype=bool)
    replay_diff = 0.0
    banned = sorted({adapter.mask_id, *adapter.forbid_ids})
    batching = resolve_batching(config.grad_batching, config.mode)

    def feasible(rec) -> bool:
        return rec.seq_len >= span.end

    def add_stats(layer: int, hidden: torch.Tensor, grads: torch.Tensor | None, which: np.ndarray) -> None:
        """The configured reductions of the gradients (k, 1, L, D) of the targets ``which``; zero rows for the
        others."""
        d = hidden.shape[-1]
        row = {r.name: np.zeros(r.shape(n_targets, n_grid, d), r.dtype) for r in reductions}
        if grads is not None:
            a = hidden[0, grid_abs].detach().float()  # (N, D)
            gr = grads[:, 0, grid_abs].float()  # (k, N, D)
            for r in reductions:
                row[r.name][which] = to_host(r(gr, a)).astype(r.dtype, copy=False)
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
        nonlocal replay_diff
        if config.remasking == "low_confidence" and adapter.sampler == "masked":
            replay_diff = max(replay_diff, check_replay(resp, s))
        which = recorded[len(scores)]
        sc = target_scores(resp, targets)
        idx = torch.as_tensor(np.flatnonzero(which), dtype=torch.long, device=device)
        grads = (_vjp(sc[idx], [hidden[l] for l in layers], batching=batching, retain_graph=retain_graph)
                 if which.any() else [None] * len(layers))
        for l, gr in zip(layers, grads):
            add_stats(l, hidden[l], gr, which)
        scores.append(to_host(sc))

    if prefix is not None:
        _, prefix_logits, hidden = prefix
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
        conditioning = traj.conditioning[s] if traj.conditioning else None  # as generation fed it
        step = kept.pop(s, None) or forward(traj.states[s].unsqueeze(0).to(device), conditioning)
        records = step.records  # none where an answer pass runs other blocks (DiffusionGemma's decoder)
        forwards.append({"step": s, "kind": "full" if prefix is None else "answer",
                         "seq_len": records[0].seq_len if records else 0,
                         "contains_image_span": bool(records) and all(feasible(r) for r in records)})
        if prefix is None:
            hidden = {r.layer: r.hidden for r in records}
            tams.append(to_host(step.grid_logits[:, class_ids].T))
            attribute(s, step.resp, hidden, retain_graph=False)
            for l in layers:
                acts[l].append(to_host(hidden[l][0, grid_abs].float()).astype(np.float16))
            act_row.append(len(act_row))
        else:
            tams.append(tam_row)
            attribute(s, step.resp, hidden, retain_graph=True)
            act_row.append(0)
        del step, records
    # Every step's forward of a kind has the same sequence, so a replayed one stands for all of its kind.
    step_feasible[:] = bool(forwards[-1]["contains_image_span"]) if attr_steps else False

    layer_arrays: dict[int, dict[str, np.ndarray]] = {}
    for l in layers:
        la = {"acts": np.stack(acts[l])}
        for name, rows in stats[l].items():
            la[name] = np.stack(rows)
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
