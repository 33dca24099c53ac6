"""The GPU check: what one GPU gives the policy, in a few minutes.

    scripts/gpu_check.sh [--peak-tflops T] [--seconds S]

Prints, on the first CUDA device:
  1. bf16 training decisions/s and model FLOPs utilisation (MFU) for `small`, `medium` and
     `large` (AdamW, windows of each preset's full context, synthetic decisions of the
     encoder's real sizes: the speed of the model, not of the data loader);
  2. `large`'s peak memory in one training step under a 40 GB cap set in torch (the card that
     failed in the published run), beside scripts/estimate_memory.py's prediction for the same
     micro-batch;
  3. the batched decision latency of 256 concurrent battles (one new decision each, through
     the per-battle key/value caches, as the policy player does).

On a machine without a GPU it says so and exits with status 2. MFU needs the card's peak
bf16 dense FLOP/s: known cards are recognised by name, any other is given by --peak-tflops.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from estimate_memory import (  # scripts/estimate_memory.py, beside this file
    GB,
    estimate,
    largest_micro_batch,
)

from battles.encode import ObservationEncoder
from models.policy import PolicyConfig, PolicyTransformer

# Dense bf16 peak FLOP/s (no sparsity) by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0,
               "RTX 4090": 165.0, "A6000": 155.0}
CAP_GB = 40.0
BATTLES = 256


def model_config(preset: str, encoder: ObservationEncoder) -> PolicyConfig:
    return PolicyConfig.preset(preset, vocab_size=encoder.vocab.size, n_tokens=encoder.n_tokens,
                               n_numbers=encoder.n_numbers, n_action_features=encoder.n_action_features)


def synthetic(cfg: PolicyConfig, batch: int, context: int, device, generator) -> tuple:
    """Decisions of the encoder's sizes: tokens, numbers, a legal mask with 4 legal actions, actions."""
    tokens = torch.randint(1, cfg.vocab_size, (batch, context, cfg.n_tokens), device=device, generator=generator)
    numbers = torch.randn(batch, context, cfg.n_numbers, device=device, generator=generator)
    legal = torch.zeros(batch, context, cfg.n_actions, dtype=torch.bool, device=device)
    legal[..., :4] = True
    action = torch.randint(0, 4, (batch, context), device=device, generator=generator)
    return tokens, numbers, legal, action


def train_step(model, opt, data) -> None:
    tokens, numbers, legal, action = data
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, value = model(tokens, numbers, legal)
        loss = F.cross_entropy(logits.float().flatten(0, 1), action.flatten()) + value.float().square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def training_speed(preset: str, encoder, seconds: float, peak: float | None, device) -> None:
    cfg = model_config(preset, encoder)
    model = PolicyTransformer(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    context = cfg.max_context
    batch = min(64, largest_micro_batch(cfg, CAP_GB, strategy="single", world_size=1).micro_batch)
    data = synthetic(cfg, batch, context, device, torch.Generator(device).manual_seed(0))
    for _ in range(3):  # warm-up: kernels chosen, allocator settled
        train_step(model, opt, data)
    torch.cuda.synchronize()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        train_step(model, opt, data)
        steps += 1
        if steps % 5 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    rate = steps * batch * context / elapsed
    flops = model.flops_per_decision(context=context, training=True) * rate
    mfu = f"{flops / (peak * 1e12):.1%}" if peak else "n/a (give --peak-tflops)"
    params = sum(p.numel() for p in model.parameters())
    print(f"  {preset:7} {params / 1e6:6.1f} M params  micro-batch {batch:3d} x {context} decisions  "
          f"{rate:12,.0f} decisions/s  {flops / 1e12:7.1f} TFLOP/s  MFU {mfu}", flush=True)
    del model, opt, data
    torch.cuda.empty_cache()


def large_memory(encoder, device) -> None:
    cfg = model_config("large", encoder)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, CAP_GB * GB / total), device)
    predicted = largest_micro_batch(cfg, CAP_GB, strategy="single", world_size=1)
    batch = predicted.micro_batch
    model = PolicyTransformer(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    data = synthetic(cfg, batch, cfg.max_context, device, torch.Generator(device).manual_seed(1))
    torch.cuda.reset_peak_memory_stats(device)
    try:
        for _ in range(2):  # the second step holds the optimizer's moments too
            train_step(model, opt, data)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device)
        verdict = "fits"
    except torch.cuda.OutOfMemoryError:
        peak, verdict = torch.cuda.max_memory_allocated(device), "OUT OF MEMORY under the cap"
    same = estimate(cfg, batch, strategy="single", world_size=1)
    print(f"  large, micro-batch {batch} x {cfg.max_context}, cap {CAP_GB:g} GB: measured peak "
          f"{peak / GB:.1f} GB, predicted {same.total / GB:.1f} GB (ratio {peak / same.total:.2f}); {verdict}",
          flush=True)
    del model, opt, data
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.0, device)


def decision_latency(encoder, device, preset: str = "small", decisions: int = 40) -> None:
    cfg = model_config(preset, encoder)
    model = PolicyTransformer(cfg).to(device).eval()
    caches = [model.init_cache() for _ in range(BATTLES)]
    g = torch.Generator(device).manual_seed(2)
    times = []
    for step in range(decisions):
        tokens, numbers, legal, _ = synthetic(cfg, BATTLES, 1, device, g)
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.step_batch(tokens[:, 0], numbers[:, 0], legal[:, 0], caches)
        torch.cuda.synchronize()
        if step >= 3:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"  {preset}, {BATTLES} concurrent battles: one batched decision {median * 1e3:.1f} ms median "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}) = {BATTLES / median:,.0f} decisions/s",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's bf16 dense peak, for MFU")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed training per preset")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU machine "
              "with a CUDA build of torch 2.13.0 (see the README's set-up)", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(device)
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    print(f"gpu_check on {name} ({torch.cuda.get_device_properties(device).total_memory / GB:.0f} GB), "
          f"torch {torch.__version__}, bf16 peak {peak or '?'} TFLOP/s", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    encoder = ObservationEncoder()
    t0 = time.perf_counter()
    print("1. training, bf16 autocast, AdamW:")
    for preset in ("small", "medium", "large"):
        training_speed(preset, encoder, args.seconds, peak, device)
    print(f"2. peak memory of a training step under a {CAP_GB:g} GB cap:")
    large_memory(encoder, device)
    print("3. batched decisions:")
    decision_latency(encoder, device)
    print(f"gpu_check: done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
