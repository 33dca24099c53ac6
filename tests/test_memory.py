"""The memory estimator against the peak measured by torch's CPU allocator, and its choices."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from models.policy import PolicyConfig, PolicyTransformer

_spec = importlib.util.spec_from_file_location(
    "estimate_memory", Path(__file__).resolve().parents[1] / "scripts" / "estimate_memory.py")
estimate_memory = sys.modules["estimate_memory"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(estimate_memory)
GB, count_parameters, estimate = estimate_memory.GB, estimate_memory.count_parameters, estimate_memory.estimate
largest_micro_batch, main = estimate_memory.largest_micro_batch, estimate_memory.main

TOLERANCE = 0.10  # relative; the formulas count each saved tensor, so misses are small


def measured_peak(model, batch, bf16: bool) -> int:
    """Peak bytes allocated above the start over forward + backward (CPU allocator events)."""
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, value = model(*batch)
            loss = logits.float().logsumexp(-1).mean() + value.float().mean()
        loss.backward()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("bf16,checkpointing", [(False, False), (False, True), (True, False), (True, True)])
def test_estimate_matches_measured_cpu_peak(bf16, checkpointing):
    # dropout 0: CPU attention is fused then, as on GPU (with dropout it keeps a T x T matrix).
    cfg = PolicyConfig.preset("tiny", vocab_size=300, n_tokens=12, n_numbers=10, n_layers=3,
                              dropout=0.0, activation_checkpointing=checkpointing)
    torch.manual_seed(0)
    model = PolicyTransformer(cfg).train()
    B, T = 16, 64
    batch = (torch.randint(1, 300, (B, T, 12)), torch.randn(B, T, 10), torch.ones(B, T, 13, dtype=torch.bool))
    peak = measured_peak(model, batch, bf16)
    est = estimate(cfg, B, T, bf16=bf16, checkpointing=checkpointing, strategy="single",
                   overhead_gb=0, device="cpu")
    # The peak comes as backward starts: activations all kept (and under bf16 autocast's cached
    # weight casts), hardly any gradient made yet.
    predicted = est.activations + est.weight_copies
    assert abs(predicted - peak) / peak < TOLERANCE, (predicted, peak)


def test_largest_micro_batch_fits_with_headroom():
    cfg = PolicyConfig.preset("large", vocab_size=3457, n_tokens=150, n_numbers=442)
    n = count_parameters(cfg)
    assert 150e6 < n.total < 250e6
    fsdp = estimate(cfg, 1, bf16=True, strategy="fsdp", world_size=8)
    assert fsdp.optimizer == 8 * n.total / 8 and fsdp.params == 4 * n.total / 8  # sharded
    assert estimate(cfg, 1, strategy="ddp").optimizer == 8 * n.total

    best = largest_micro_batch(cfg, 40, headroom=0.15, bf16=True, strategy="fsdp", world_size=8)
    over = estimate(cfg, best.micro_batch + 1, bf16=True, strategy="fsdp", world_size=8)
    assert best.total <= 0.85 * 40 * GB < over.total
    ckpt = largest_micro_batch(cfg, 40, checkpointing=True)
    assert ckpt.micro_batch > 3 * best.micro_batch  # checkpointing keeps ~1/10 of the activations
    assert largest_micro_batch(cfg, 80).micro_batch > best.micro_batch
    assert largest_micro_batch(cfg, 40, context=128).micro_batch > best.micro_batch
    assert largest_micro_batch(cfg, 40, bf16=False).micro_batch < best.micro_batch
    with pytest.raises(ValueError, match="shorter --context"):
        largest_micro_batch(cfg, 2, strategy="single")


def test_cli_prints_the_choice(capsys):
    main(["--preset", "small", "--gpu-gb", "40", "--strategy", "ddp", "--world-size", "2",
          "--global-batch", "256"])
    out = capsys.readouterr().out
    assert "micro-batch (largest fit)" in out and "trainer.grad_accum=" in out
