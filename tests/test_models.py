"""The policy network: presets, masking, causality, the cache, checkpointing of activations."""

from __future__ import annotations

import gc

import pytest
import torch

from models.policy import PRESET_TARGETS, PolicyConfig, PolicyTransformer

# Small sizes keep these tests fast; the presets' real sizes are checked on 'meta'.
SIZES = dict(vocab_size=60, n_tokens=7, n_numbers=5)


def make_model(seed: int = 0, **overrides) -> PolicyTransformer:
    torch.manual_seed(seed)
    cfg = PolicyConfig.preset("tiny", **{**SIZES, **overrides})
    return PolicyTransformer(cfg).eval()


def make_battle(cfg: PolicyConfig, B: int, T: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (B, T, cfg.n_tokens), generator=g)
    numbers = torch.randn(B, T, cfg.n_numbers, generator=g)
    legal = torch.rand(B, T, cfg.n_actions, generator=g) < 0.5
    legal[..., 0] |= ~legal.any(-1)  # at least one legal action per decision
    return tokens, numbers, legal


@pytest.mark.parametrize("name", ["tiny", "small", "medium", "large"])
def test_preset_parameter_counts_within_band(name):
    with torch.device("meta"):
        model = PolicyTransformer(PolicyConfig.preset(name))
    n = model.num_parameters()
    target = PRESET_TARGETS[name]
    assert 0.75 * target <= n <= 1.25 * target, f"{name}: {n:,} params, target {target:,.0f}"
    assert model.cfg.max_context >= 128


def test_meta_count_equals_real_count():
    cfg = PolicyConfig.preset("tiny")
    with torch.device("meta"):
        meta = PolicyTransformer(cfg).num_parameters()
    assert PolicyTransformer(cfg).num_parameters() == meta


def test_shapes_and_value_range():
    model = make_model()
    tokens, numbers, legal = make_battle(model.cfg, B=3, T=9)
    logits, value = model(tokens, numbers, legal)
    assert logits.shape == (3, 9, 13) and value.shape == (3, 9)
    assert torch.isfinite(logits).all() and torch.isfinite(value).all()
    assert (value.abs() <= 1).all()


def test_masked_logits_never_pick_illegal_and_padding_is_finite():
    model = make_model()
    tokens, numbers, legal = make_battle(model.cfg, B=4, T=12, seed=5)
    legal[1, 3] = False  # a padding row: nothing legal
    logits, _ = model(tokens, numbers, legal)
    probs = logits.softmax(-1)
    assert not torch.isnan(probs).any()
    has_legal = legal.any(-1)
    chosen = logits.argmax(-1)
    assert legal.gather(-1, chosen[..., None])[..., 0][has_legal].all()
    assert (probs[~legal & has_legal[..., None]] == 0).all()
    sampled = torch.multinomial(probs[has_legal], 200, replacement=True)
    assert legal[has_legal].gather(-1, sampled).all()


def test_causal_later_decisions_do_not_change_earlier_outputs():
    model = make_model()
    tokens, numbers, legal = make_battle(model.cfg, B=2, T=10)
    logits, value = model(tokens, numbers, legal)
    t2, n2, l2 = tokens.clone(), numbers.clone(), legal.clone()
    t2[:, 6:] = torch.randint(1, model.cfg.vocab_size, t2[:, 6:].shape)
    n2[:, 6:] += 3.0
    l2[:, 6:] = True
    logits2, value2 = model(t2, n2, l2)
    torch.testing.assert_close(logits2[:, :6], logits[:, :6], rtol=0, atol=1e-6)
    torch.testing.assert_close(value2[:, :6], value[:, :6], rtol=0, atol=1e-6)
    assert not torch.allclose(value2[:, 6:], value[:, 6:])  # the change did reach later steps


def _step_all(model, battles, starts):
    """Step battles decision by decision, batched; battle i joins at step starts[i]."""
    caches = [model.init_cache() for _ in battles]
    out = [([], []) for _ in battles]
    n_steps = max(s + b[0].shape[1] for s, b in zip(starts, battles, strict=True))
    for step in range(n_steps):
        rows = [i for i, b in enumerate(battles) if 0 <= step - starts[i] < b[0].shape[1]]
        rows = rows[::-1] if step % 2 else rows  # row order must not matter
        ts = [step - starts[i] for i in rows]
        x = [
            torch.stack([battles[i][j][0, t] for i, t in zip(rows, ts, strict=True)])
            for j in range(3)
        ]
        logits, value = model.step_batch(*x, [caches[i] for i in rows])
        for r, i in enumerate(rows):
            out[i][0].append(logits[r])
            out[i][1].append(value[r])
    return [(torch.stack(lo), torch.stack(v)) for lo, v in out], caches


@pytest.mark.parametrize("action_features", [0, 2])
def test_cached_steps_equal_full_recomputation_batched_battles(action_features):
    model = make_model(n_layers=3, n_numbers=5 + 13 * action_features,
                       n_action_features=action_features)
    lengths, starts = [1, 7, 30, 18], [0, 2, 0, 5]
    battles = [make_battle(model.cfg, 1, T, seed=10 + i) for i, T in enumerate(lengths)]
    stepped, caches = _step_all(model, battles, starts)
    for (logits_s, value_s), battle, T, cache in zip(
        stepped, battles, lengths, caches, strict=True
    ):
        logits_f, value_f = model(*battle)
        torch.testing.assert_close(logits_s, logits_f[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(value_s, value_f[0], rtol=0, atol=1e-5)
        assert len(cache) == T


def test_cached_steps_equal_full_recomputation_when_window_slides():
    W = 6
    model = make_model(n_layers=3, max_context=W)
    lengths = [25, 4, 13]
    battles = [make_battle(model.cfg, 1, T, seed=20 + i) for i, T in enumerate(lengths)]
    stepped, caches = _step_all(model, battles, [0, 3, 1])
    for (logits_s, value_s), battle in zip(stepped, battles, strict=True):
        logits_f, value_f = model(*battle)
        torch.testing.assert_close(logits_s, logits_f[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(value_s, value_f[0], rtol=0, atol=1e-5)
    assert caches[0].pool.k.shape[3] == W  # the ring buffer never grows past the window


def test_sliding_window_receptive_field_is_as_documented():
    """Output at t depends on decisions t - n_layers*(W-1) .. t only, at any offset."""
    W, n_layers, T = 5, 2, 20
    model = make_model(n_layers=n_layers, max_context=W)
    battle = make_battle(model.cfg, 1, T, seed=3)
    logits, value = model(*battle)
    reach = n_layers * (W - 1)
    t = T - 1
    start = t - reach
    logits_suffix, value_suffix = model(*(x[:, start:] for x in battle))
    torch.testing.assert_close(value_suffix[0, -1], value[0, t], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_suffix[0, -1], logits[0, t], rtol=0, atol=1e-5)
    # One decision less of history does change it: the reach is exact, not an upper bound.
    _, value_short = model(*(x[:, start + 1 :] for x in battle))
    assert not torch.allclose(value_short[0, -1], value[0, t], atol=1e-7)


def test_activation_checkpointing_same_loss_and_grads():
    results = []
    for ckpt in (False, True):
        model = make_model(seed=4, activation_checkpointing=ckpt, dropout=0.0).train()
        tokens, numbers, legal = make_battle(model.cfg, B=2, T=8, seed=7)
        logits, value = model(tokens, numbers, legal)
        target = legal.float().argmax(-1)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
        loss = loss + (value - 0.5).pow(2).mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_forward_is_finite():
    model = make_model()
    tokens, numbers, legal = make_battle(model.cfg, B=2, T=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, value = model(tokens, numbers, legal)
        caches = [model.init_cache(dtype=torch.bfloat16) for _ in range(2)]
        step_logits, _ = model.step_batch(tokens[:, 0], numbers[:, 0], legal[:, 0], caches)
    assert torch.isfinite(logits).all() and torch.isfinite(value).all()
    assert legal[:, 0].gather(-1, step_logits.argmax(-1, keepdim=True)).all()


def test_action_features_score_each_slot_alike():
    """The per-action scorer is shared: swapping two slots' features swaps their scores."""
    model = make_model(n_numbers=3 + 13 * 2, n_action_features=2)
    _, numbers, legal = make_battle(model.cfg, 1, 1)
    legal[:] = True
    x = torch.randn(1, 1, model.cfg.d_model)
    swapped = numbers.clone()
    a, b = 3 + 0 * 2, 3 + 5 * 2  # slots 0 and 5
    swapped[..., a:a + 2], swapped[..., b:b + 2] = numbers[..., b:b + 2], numbers[..., a:a + 2]
    diff = model._heads(x, numbers, legal)[0] - model._heads(x, swapped, legal)[0]  # (1, 1, 13)
    assert diff[..., 0].abs() > 1e-6  # the features matter
    torch.testing.assert_close(diff[..., 0], -diff[..., 5], rtol=0, atol=1e-5)
    assert diff[..., 1:5].abs().max() == 0  # other slots untouched
    with pytest.raises(ValueError, match="n_action_features"):
        PolicyConfig.preset("tiny", **{**SIZES, "n_action_features": 1})


def test_input_errors_are_clear():
    model = make_model()
    tokens, numbers, legal = make_battle(model.cfg, B=1, T=3)
    with pytest.raises(ValueError, match="numbers has shape"):
        model(tokens, numbers[..., :-1], legal)
    with pytest.raises(ValueError, match="vocab_size is 60"):
        model(tokens + model.cfg.vocab_size, numbers, legal)
    with pytest.raises(ValueError, match="one per row"):
        model.step_batch(tokens[:, 0], numbers[:, 0], legal[:, 0], [])
    cache = model.init_cache()
    with pytest.raises(ValueError, match="twice"):
        model.step_batch(tokens[0, :2], numbers[0, :2], legal[0, :2], [cache, cache])
    other = make_model(n_layers=3).init_cache()
    with pytest.raises(ValueError, match="different model"):
        model.step_batch(tokens[:, 0], numbers[:, 0], legal[:, 0], [other])
    with pytest.raises(RuntimeError, match="eval"):
        model.train().step_batch(tokens[:, 0], numbers[:, 0], legal[:, 0], [cache])


def test_config_round_trip_and_validation():
    cfg = PolicyConfig.preset("small", vocab_size=123)
    assert PolicyConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.vocab_size == 123 and cfg.n_tokens == 120
    with pytest.raises(ValueError, match="unknown policy preset 'huge'"):
        PolicyConfig.preset("huge")
    with pytest.raises(ValueError, match=r"unknown policy config key\(s\) \['d_modle'\]"):
        PolicyConfig.preset("tiny", d_modle=64)
    with pytest.raises(ValueError, match="n_layers=0"):
        PolicyConfig.preset("tiny", n_layers=0)
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        PolicyConfig.preset("tiny", n_heads=3)
    with pytest.raises(ValueError, match="dropout"):
        PolicyConfig.preset("tiny", dropout=1.5)
    with pytest.raises(ValueError, match="activation_checkpointing"):
        PolicyConfig.preset("tiny", activation_checkpointing="yes")
    with pytest.raises(ValueError, match="missing required"):
        PolicyConfig.from_dict({"d_model": 64})


def test_flops_per_decision():
    model = make_model()
    n_dense = model.num_parameters() - model.turn.tok_emb.weight.numel()
    assert (
        model.flops_per_decision(context=1)
        == 6 * n_dense + 12 * model.cfg.n_layers * model.cfg.d_model
    )
    assert model.flops_per_decision(training=False) == pytest.approx(model.flops_per_decision() / 3)
    assert model.flops_per_decision(context=256) > model.flops_per_decision(context=128)


def test_a_released_cache_row_is_reused_without_its_old_keys():
    """A finished battle's pool row goes to the next battle, whose outputs ignore what it held."""
    model = make_model(n_layers=2)
    old = make_battle(model.cfg, 1, 9, seed=31)
    stepped, caches = _step_all(model, [old], [0])
    row = caches[0].row
    del caches
    gc.collect()
    new = make_battle(model.cfg, 1, 5, seed=32)
    stepped, caches = _step_all(model, [new], [0])
    assert caches[0].row == row
    logits_f, _ = model(*new)
    torch.testing.assert_close(stepped[0][0], logits_f[0], rtol=0, atol=1e-5)
