"""The masked-diffusion sampler (LLaDA low-confidence remasking) and the toy model's two logits modes."""

from __future__ import annotations

import pytest
import torch

from stages.dmllm.sampler import (
    dream_transfer_tokens,
    entropy_predictions,
    masked_diffusion_sample,
    num_transfer_tokens,
    shift_transfer_tokens,
)

MASK = 3
VOCAB = 10


def fixed_logits_fn(seed: int = 0, gen_length: int = 16):
    """A logits_fn that ignores its input and returns the same random logits every call."""
    logits = torch.randn(1, gen_length, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3.0

    def fn(x):
        assert x.shape == (1, gen_length)
        return logits

    return fn


def state_dependent_logits_fn(gen_length: int = 16):
    """Logits that depend on the current state, so every step sees a different input."""
    table = torch.randn(VOCAB, gen_length, VOCAB, generator=torch.Generator().manual_seed(1))

    def fn(x):
        return table[x[0]].sum(0, keepdim=True).expand(1, gen_length, VOCAB) + table[x[0], torch.arange(gen_length)].unsqueeze(0)

    return fn


def sample(fn, **kw):
    args = dict(gen_length=16, mask_id=MASK, steps=8, block_length=16)
    args.update(kw)
    return masked_diffusion_sample(fn, **args)


@pytest.mark.parametrize(
    ("num_masked", "steps", "expected"),
    [(8, 3, [3, 3, 2]), (16, 16, [1] * 16), (16, 4, [4, 4, 4, 4]), (5, 8, [1, 1, 1, 1, 1, 0, 0, 0])],
)
def test_num_transfer_tokens_is_llada_even_split(num_masked, steps, expected):
    assert num_transfer_tokens(num_masked, steps) == expected


#: LaViDa's predict.py schedule for 64 tokens in 32 steps (generate.py's get_num_transfer_tokens_sch, shift 3).
LAVIDA_64_IN_32 = [1] * 13 + [2, 1, 1, 2, 2, 1, 2, 2, 3, 2, 2, 3, 3, 4, 3, 4, 5, 5, 4]


def test_shift_schedule_commits_as_lavida():
    assert shift_transfer_tokens(64, 32) == LAVIDA_64_IN_32
    assert shift_transfer_tokens(8, 4) == [1, 1, 2, 4]
    assert shift_transfer_tokens(4, 6) == [1, 1, 1, 1, 0, 0]  # more steps than tokens: the rest commit nothing
    for n, steps in ((64, 64), (37, 16), (128, 64), (5, 5)):
        counts = shift_transfer_tokens(n, steps)
        assert sum(counts) == n and all(c >= 1 for c in counts[: min(n, steps)])


def test_dream_schedule_commits_as_dream():
    # t = linspace(1, 1e-3, 5): int(8 * (1 - .7502)) = 1, int(7 * (1 - .5005 / .7502)) = 2, int(5 * .4989) = 2, rest 3
    assert dream_transfer_tokens(8, 4) == [1, 2, 2, 3]
    assert dream_transfer_tokens(64, 64)[0] == 0  # int(64 * (1 - 0.98440)) = 0: Dream commits nothing at first
    for n, steps in ((64, 64), (64, 32), (5, 9)):
        assert sum(dream_transfer_tokens(n, steps)) == n


def test_entropy_algorithm_scores_by_negative_entropy_of_the_filtered_distribution():
    logits = torch.log(torch.tensor([[[0.6, 0.3, 0.1], [0.34, 0.33, 0.33]]], dtype=torch.float64))
    x0, score = entropy_predictions(logits, 0.0, 1.0, None)
    assert x0.tolist() == [[0, 0]]
    expected = [sum(p * torch.log(torch.tensor(p + 1e-10)).item() for p in row) for row in ([0.6, 0.3, 0.1],
                                                                                               [0.34, 0.33, 0.33])]
    torch.testing.assert_close(score[0], torch.tensor(expected, dtype=torch.float64))
    x0, score = entropy_predictions(logits, 1.0, 0.5, torch.Generator().manual_seed(0))  # nucleus keeps 0.6 alone
    assert x0[0, 0] == 0 and abs(score[0, 0]) < 1e-8
    draws = torch.stack([entropy_predictions(logits.expand(200, 2, 3), 1.0, 1.0, torch.Generator().manual_seed(i))[0]
                         for i in range(3)])
    share = (draws[..., 0] == 0).double().mean().item()  # samples follow softmax(logits): 0.6 on token 0
    assert 0.5 < share < 0.7


def test_entropy_remasking_commits_the_most_certain_position_first():
    logits = torch.zeros(1, 16, VOCAB)
    logits[0, 5, 7] = 12.0  # position 5 is certain, the others flat
    traj = sample(lambda x: logits, remasking="entropy", steps=16)  # one commit a step
    assert traj.transfer[0].tolist() == [5] and traj.final[5] == 7


def test_the_sampler_follows_the_shift_schedule_per_block():
    traj = sample(fixed_logits_fn(gen_length=64), gen_length=64, steps=64, block_length=32, schedule="shift")
    assert [len(t) for t in traj.transfer] == shift_transfer_tokens(32, 32) * 2
    assert (traj.unmask_step >= 0).all()


def test_family_defaults_follow_upstream_and_options_override_them():
    from stages.capture.config import family_config
    from stages.capture.replicas import build_replica

    lavida = build_replica("lavida-llada", gen_length=8)
    config = family_config(lavida)
    assert (config.schedule, config.temperature, config.steps, config.mode) == ("shift", 0.1, 4, "prefix-cache")
    config = family_config(lavida, schedule="even", temperature=0.0, steps=8, mode="full")
    assert (config.schedule, config.temperature, config.steps, config.mode) == ("even", 0.0, 8, "full")
    config = family_config(build_replica("llada-v", gen_length=8))
    assert (config.schedule, config.temperature, config.steps, config.mode) == ("even", 0.0, 8, "full")
    config = family_config(build_replica("lavida-dream", gen_length=8))
    assert (config.remasking, config.schedule, config.temperature, config.top_p) == ("entropy", "dream", 0.2, 0.95)


@pytest.mark.parametrize(
    ("gen_length", "steps", "block_length", "expected"),
    [(16, 8, 16, [2] * 8), (12, 4, 6, [3, 3, 3, 3]), (7, 3, 7, [3, 2, 2]), (16, 8, 4, [2] * 8)],
)
def test_transfer_counts_follow_the_schedule(gen_length, steps, block_length, expected):
    traj = sample(fixed_logits_fn(gen_length=gen_length), gen_length=gen_length, steps=steps, block_length=block_length)
    assert [len(t) for t in traj.transfer] == expected
    assert traj.states.shape == (steps + 1, gen_length)


def test_each_position_is_unmasked_exactly_once_and_states_are_consistent():
    traj = sample(state_dependent_logits_fn(), steps=16, block_length=4)
    committed = torch.cat(traj.transfer)
    assert sorted(committed.tolist()) == list(range(16))
    assert (traj.states[0] == MASK).all() and (traj.final != MASK).all()
    assert torch.equal(traj.states[-1], traj.final)
    for step, positions in enumerate(traj.transfer):
        before, after = traj.states[step], traj.states[step + 1]
        assert (before[positions] == MASK).all()
        changed = (before != after).nonzero().flatten()
        assert torch.equal(changed, positions)  # nothing else moves, nothing is remasked
        assert (traj.unmask_step[positions] == step).all()


def test_no_position_of_a_later_block_is_unmasked_before_the_block_is_complete():
    traj = sample(state_dependent_logits_fn(), steps=8, block_length=4)
    steps = traj.unmask_step.view(4, 4)  # (block, position in block)
    for b in range(3):
        assert steps[b].max() < steps[b + 1].min()
    # 2 steps per block, 2 tokens per step
    assert [sorted(set(row)) for row in steps.tolist()] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_low_confidence_commits_the_most_confident_position_first():
    # Position i predicts token 5 with a probability that grows with i, so greedy one-per-step
    # remasking must fill the answer from the last position to the first.
    logits = torch.zeros(1, 8, VOCAB)
    logits[0, :, 5] = torch.arange(1, 9, dtype=torch.float32)
    traj = sample(lambda x: logits, gen_length=8, steps=8, block_length=8)
    assert [t.tolist() for t in traj.transfer] == [[7 - s] for s in range(8)]
    assert traj.final.tolist() == [5] * 8
    allowed = torch.arange(VOCAB) != MASK  # the mask token is banned before the softmax, as in LLaDA-V
    expected = torch.softmax(logits[0].masked_fill(~allowed, float("-inf")), -1)[:, 5]
    torch.testing.assert_close(traj.confidence, expected)


def test_mask_and_forbidden_ids_are_never_predicted():
    logits = torch.zeros(1, 8, VOCAB)
    logits[0, :, MASK] = 100.0
    logits[0, :, 7] = 50.0
    logits[0, :, 2] = 10.0
    traj = sample(lambda x: logits, gen_length=8, steps=4, block_length=8, forbid_ids=(7,))
    assert traj.final.tolist() == [2] * 8


def test_temperature_sampling_is_deterministic_under_a_seed():
    fn = state_dependent_logits_fn()
    run = lambda seed: sample(fn, temperature=1.0, generator=torch.Generator().manual_seed(seed))
    a, b = run(0), run(0)
    assert torch.equal(a.states, b.states) and torch.equal(a.unmask_step, b.unmask_step)
    assert torch.equal(a.confidence, b.confidence)
    assert any(not torch.equal(a.states, run(seed).states) for seed in range(1, 6))


def test_random_remasking_is_deterministic_under_a_seed():
    fn = fixed_logits_fn()
    run = lambda seed: sample(fn, remasking="random", generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3).unmask_step, run(3).unmask_step)
    assert any(not torch.equal(run(3).unmask_step, run(seed).unmask_step) for seed in range(4, 9))


def test_greedy_is_independent_of_the_generator():
    fn = state_dependent_logits_fn()
    a = sample(fn, generator=torch.Generator().manual_seed(0))
    b = sample(fn, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.states, b.states)


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        (dict(block_length=5), "block_length"),
        (dict(block_length=0), "block_length"),
        (dict(steps=3, block_length=8), "steps"),  # 2 blocks do not divide 3 steps
        (dict(steps=0), "steps"),
        (dict(temperature=-1.0), "temperature"),
        (dict(remasking="margin"), "remasking"),
        (dict(schedule="cosine"), "schedule"),
        (dict(top_p=0.0), "top_p"),
    ],
)
def test_bad_schedule_arguments_raise_naming_the_parameter(kw, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        sample(fixed_logits_fn(), **kw)


def test_grad_mode_is_no_grad_unless_asked():
    seen = []
    base = fixed_logits_fn()

    def fn(x):
        seen.append(torch.is_grad_enabled())
        return base(x)

    sample(fn, steps=2)
    sample(fn, steps=2, grad=True)
    assert seen == [False, False, True, True]


# ------------------------------------------------------------------ the toy model's two logits modes


@pytest.fixture(scope="module")
def untrained_model():
    from stages.toy.model import ToyDMLLM

    torch.manual_seed(0)
    return ToyDMLLM().eval()


def test_prefix_cache_equals_one_pass_under_the_prefix_dlm_mask(untrained_model):
    m = untrained_model
    pixel_values = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    x = torch.randint(5, len(m.tokenizer), (1, m.gen_length), generator=torch.Generator().manual_seed(1))
    x[0, ::3] = m.tokenizer.mask_id
    with torch.no_grad():
        fn = m.make_logits_fn(pixel_values, mode="prefix-cache")
        cached_length = fn.cache.get_seq_length()
        first = fn(x)
        assert fn.cache.get_seq_length() == cached_length == m.prefix_length
        second = fn(x)  # the cache did not grow, so the same input gives the same logits
        prefix, span = m.embed_prompt(pixel_values)
        one_pass, _ = m.lm_forward(torch.cat([prefix, m.embed_tokens(x)], 1), attention_mask=m.prefix_dlm_mask())
    assert span == (1, 1 + 144)
    torch.testing.assert_close(first, one_pass[:, m.prefix_length :], atol=1e-5, rtol=0)
    torch.testing.assert_close(second, first, atol=1e-6, rtol=0)


def test_full_mode_is_one_unmasked_bidirectional_pass(untrained_model):
    m = untrained_model
    pixel_values = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    x = torch.full((1, m.gen_length), m.tokenizer.mask_id)
    with torch.no_grad():
        logits = m.make_logits_fn(pixel_values, mode="full")(x)
        prefix, _ = m.embed_prompt(pixel_values)
        everything = m.lm_forward(torch.cat([prefix, m.embed_tokens(x)], 1))[0][:, m.prefix_length :]
        masked = m.lm_forward(torch.cat([prefix, m.embed_tokens(x)], 1), attention_mask=m.prefix_dlm_mask())[0]
    torch.testing.assert_close(logits, everything, atol=1e-6, rtol=0)
    # The image rows see the answer in full mode, so the modes really differ.
    assert not torch.allclose(logits, masked[:, m.prefix_length :], atol=1e-4)


# ------------------------------------------------------------------ DiffusionGemma's uniform-noise sampler
def test_entropy_bound_accepts_the_lowest_entropy_positions_within_the_bound():
    from stages.dmllm.uniform import entropy_bound_accept

    logits = torch.zeros(1, 5, 6)
    logits[0, 1, 2] = logits[0, 3, 4] = 40.0  # positions 1 and 3 certain (entropy 0), the others log 6 = 1.79
    # sum of the accepted entropies minus their largest <= bound: both certain ones plus one uncertain one
    assert entropy_bound_accept(logits, 0.1)[0].tolist() == [True, True, False, True, False]
    assert entropy_bound_accept(logits, 2.0)[0].sum() == 4  # 0 + 0 + 1.79 <= 2 lets a fourth in


def test_uniform_noise_sampler_conditions_on_the_previous_tempered_logits():
    from stages.dmllm.uniform import T_MAX, T_MIN, uniform_noise_sample

    steps, calls = 4, []
    table = torch.randn(5, 6, generator=torch.Generator().manual_seed(0)) * 4

    def step_fn(x, conditioning):
        calls.append((x.clone(), conditioning))
        return (table + len(calls)).unsqueeze(0)

    traj = uniform_noise_sample(step_fn, gen_length=5, vocab_size=6, steps=steps, generator=torch.Generator().manual_seed(1))
    assert calls[0][1] is None and traj.conditioning[0] is None
    for i in range(1, steps):  # step i sees step i-1's logits divided by its temperature (N..1 counter)
        temperature = T_MIN + (T_MAX - T_MIN) * (steps - i + 1) / steps
        torch.testing.assert_close(calls[i][1], (table + i).unsqueeze(0) / temperature)
        assert traj.conditioning[i] is calls[i][1] and torch.equal(calls[i][0][0], traj.states[i])
    assert torch.equal(traj.final, table.argmax(-1)) and traj.states.shape == (steps + 1, 5)
    again = uniform_noise_sample(step_fn, gen_length=5, vocab_size=6, steps=steps, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.states, traj.states)


def test_uniform_noise_unmask_step_is_when_the_argmax_settles():
    from stages.dmllm.uniform import uniform_noise_sample

    calls = []

    def step_fn(x, conditioning):
        calls.append(1)
        logits = torch.zeros(1, 3, 4)
        logits[0, 0, 1 if len(calls) <= 2 else 2] = 5.0  # position 0 settles on token 2 at step 2
        logits[0, 1, 3] = 5.0  # position 1 never changes
        logits[0, 2, 0 if len(calls) != 4 else 1] = 5.0  # position 2 changes only at the last step
        return logits

    traj = uniform_noise_sample(step_fn, gen_length=3, vocab_size=4, steps=4, generator=torch.Generator().manual_seed(0))
    assert traj.final.tolist() == [2, 3, 1] and traj.unmask_step.tolist() == [2, 0, 3]
    assert [t.tolist() for t in traj.transfer] == [[1], [], [0], [2]]
