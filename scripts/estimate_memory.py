"""Peak GPU memory of a training step, and the largest micro-batch that fits.

    python scripts/estimate_memory.py --preset large --gpu-gb 40 [--context 256] [--no-bf16]
        [--strategy fsdp|ddp|single] [--world-size 8] [--global-batch 512]

Per GPU, a step holds: the fp32 parameters, their fp32 gradients, Adam's two fp32 moments
(all three split by the world size under FSDP), the 16-bit weight copies the forward uses
(autocast casts under DDP; the gathered blocks under FSDP), DDP's gradient buckets, and the
activations saved for backward, which grow with micro-batch x context. The micro-batch chosen
is the largest whose estimate fits in the card less a 15% headroom (allocator fragmentation,
transient buffers); gradient accumulation then reaches the global batch.

Activations are counted tensor by tensor for this model (models/policy.py) with fused
attention (flash / memory-efficient SDPA: no T x T matrix is kept), per decision and layer:
  two LayerNorm inputs (fp32 on CUDA)                      8 C
  LN outputs, q k v, rotated q k, attention out, its copy,
  MLP input, MLP hidden before and after GELU               a (9 + 2 m) C   (a: 2 bf16, 4 fp32)
  attention log-sum-exp                                     4 H
  dropout masks (when dropout > 0)                          2 C
With activation checkpointing only each block's input (a C) is kept, plus one block's full
activations while it is recomputed in backward. tests/test_memory.py checks these formulas
against the peak measured by torch's CPU allocator on a small model.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch

from models.policy import PolicyConfig, PolicyTransformer

GB = 1024**3
STRATEGIES = ("fsdp", "ddp", "single")


@dataclass
class ParamCounts:
    total: int
    per_block: int  # one transformer block: the unit FSDP gathers at a time
    root: int  # turn encoder, final norm and heads (not inside a block)


def count_parameters(cfg: PolicyConfig) -> ParamCounts:
    """Parameter counts of the model `cfg` describes (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = PolicyTransformer(cfg)
    total = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.blocks[0].parameters()) if cfg.n_layers else 0
    return ParamCounts(total, block, total - cfg.n_layers * block)


def activation_bytes(cfg: PolicyConfig, context: int, *, bf16: bool, checkpointing: bool,
                     device: str = "cuda") -> int:
    """Bytes saved for backward per sample (one window of `context` decisions).

    `device` matters under bf16 only: CUDA's autocast runs LayerNorm in fp32 (its input is
    kept as an fp32 copy, its output cast once per consumer), CPU's in bf16.
    """
    C, H, m, K, F = cfg.d_model, cfg.n_heads, cfg.mlp_ratio, cfg.n_tokens, cfg.n_numbers
    a = 2 if bf16 else 4
    ln = 4 if device == "cuda" else a  # bytes of a saved LayerNorm input
    masks = cfg.dropout > 0
    block = 2 * ln * C + a * (9 + 2 * m) * C + 4 * H + (2 * C if masks else 0)
    # token ids (int64), their embeddings, the numeric input, the numeric MLP's hidden layer
    turn = 8 * K + a * K * cfg.d_token + a * (F + cfg.n_actions) + 2 * a * C + (C if masks else 0)
    # final norm's input and output (two casts on CUDA), value MLP's hidden layer, logits, mask
    heads = (2 * ln if ln == 4 else 2 * a) * C + 2 * a * C + cfg.n_actions * 9
    blocks = cfg.n_layers * a * C + block if checkpointing else cfg.n_layers * block
    return context * (turn + heads + blocks)


@dataclass
class MemoryEstimate:
    """Bytes per GPU for one training step, term by term."""

    micro_batch: int
    context: int
    strategy: str
    world_size: int
    bf16: bool
    checkpointing: bool
    params: float
    grads: float
    optimizer: float
    weight_copies: float
    comm_buffers: float
    activations: float
    overhead: float

    TERMS = ("params", "grads", "optimizer", "weight_copies", "comm_buffers", "activations", "overhead")

    @property
    def total(self) -> float:
        return sum(getattr(self, t) for t in self.TERMS)


def estimate(cfg: PolicyConfig, micro_batch: int, context: int | None = None, *, bf16: bool = True,
             checkpointing: bool = False, strategy: str = "fsdp", world_size: int = 8,
             overhead_gb: float = 1.0, device: str = "cuda") -> MemoryEstimate:
    """Peak memory per GPU of a training step with AdamW (fp32 master weights and moments)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: use one of {', '.join(STRATEGIES)}")
    context = cfg.max_context if context is None else context
    if micro_batch < 0 or context < 1 or world_size < 1:
        raise ValueError(f"need micro_batch >= 0, context >= 1, world_size >= 1; got "
                         f"{micro_batch}, {context}, {world_size}")
    n = count_parameters(cfg)
    shard = world_size if strategy == "fsdp" else 1
    half = 2 if bf16 else 4
    if strategy == "fsdp":
        # Gathered (unsharded) compute copies of the root and of two blocks (one prefetched),
        # and their unsharded gradients before the reduce-scatter.
        gathered = n.root + 2 * n.per_block
        copies, comm = gathered * half, gathered * 4
    else:
        copies = 2 * n.total if bf16 else 0  # autocast's cached casts, kept for backward
        comm = 4 * n.total if strategy == "ddp" else 0  # DDP's gradient buckets
    return MemoryEstimate(
        micro_batch, context, strategy, world_size, bf16, checkpointing,
        params=4 * n.total / shard, grads=4 * n.total / shard, optimizer=8 * n.total / shard,
        weight_copies=copies, comm_buffers=comm,
        activations=micro_batch * activation_bytes(cfg, context, bf16=bf16, checkpointing=checkpointing,
                                                   device=device),
        overhead=overhead_gb * GB,
    )


def largest_micro_batch(cfg: PolicyConfig, gpu_gb: float, headroom: float = 0.15,
                        **kwargs) -> MemoryEstimate:
    """The estimate at the largest micro-batch whose total fits in (1 - headroom) x gpu_gb."""
    if not 0 <= headroom < 1 or gpu_gb <= 0:
        raise ValueError(f"need gpu_gb > 0 and 0 <= headroom < 1, got {gpu_gb}, {headroom}")
    budget = (1 - headroom) * gpu_gb * GB
    fixed = estimate(cfg, 0, **kwargs)
    per_sample = estimate(cfg, 1, **kwargs).total - fixed.total
    batch = math.floor((budget - fixed.total) / per_sample) if budget > fixed.total else 0
    if batch < 1:
        raise ValueError(
            f"not even one window of {fixed.context} decisions fits in {gpu_gb:g} GB with "
            f"{headroom:.0%} headroom ({fixed.total / GB:.1f} GB before activations): use "
            "--strategy fsdp with more GPUs, activation checkpointing, or a shorter --context")
    return estimate(cfg, batch, **kwargs)


def format_report(cfg: PolicyConfig, preset: str, gpu_gb: float, headroom: float,
                  columns: list[MemoryEstimate], global_batch: int | None) -> str:
    """A table of the estimates side by side, and the overrides to use."""
    first = columns[0]
    n = count_parameters(cfg)
    where = {"fsdp": f"FSDP over {first.world_size} GPUs", "ddp": f"DDP over {first.world_size} GPUs",
             "single": "one GPU"}[first.strategy]
    lines = [f"{preset} preset: {n.total / 1e6:.1f}M parameters (d_model {cfg.d_model}, "
             f"{cfg.n_layers} layers), context {first.context}, "
             f"{'bf16' if first.bf16 else 'fp32'}, {where}",
             f"budget: {gpu_gb:g} GB less {headroom:.0%} headroom = {(1 - headroom) * gpu_gb:.1f} GB per GPU"]
    header = ["", *("checkpointing" if e.checkpointing else "no checkpointing" for e in columns)]
    rows = [header, ["micro-batch (largest fit)", *(str(e.micro_batch) for e in columns)]]
    for term in MemoryEstimate.TERMS:
        rows.append([term.replace("_", " ") + " (GB)", *(f"{getattr(e, term) / GB:.2f}" for e in columns)])
    rows.append(["total (GB)", *(f"{e.total / GB:.2f}" for e in columns)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  " + "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
              for r in rows]
    for e in columns:
        flag = "true" if e.checkpointing else "false"
        micro, accum = e.micro_batch, 1
        if global_batch:  # as few accumulation steps as fit, then the smallest micro-batch for them
            accum = math.ceil(global_batch / (e.micro_batch * e.world_size))
            micro = math.ceil(global_batch / (accum * e.world_size))
        text = f"activation_checkpointing={flag} trainer.batch_size={micro} trainer.grad_accum={accum}"
        if global_batch:
            text += f"  (global batch {micro * accum * e.world_size})"
        lines.append(f"use: {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Estimate peak GPU memory of training and the "
                                     "largest micro-batch that fits.")
    parser.add_argument("--preset", default="large", help="tiny | small | medium | large")
    parser.add_argument("--gpu-gb", type=float, default=40.0, help="memory of one GPU")
    parser.add_argument("--context", type=int, default=None, help="window in decisions (default: "
                        "the preset's max_context)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--strategy", choices=STRATEGIES, default="fsdp")
    parser.add_argument("--world-size", type=int, default=8, help="GPUs in the run")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--headroom", type=float, default=0.15)
    parser.add_argument("--overhead-gb", type=float, default=1.0,
                        help="CUDA context, NCCL and allocator bookkeeping outside torch's tensors")
    parser.add_argument("--global-batch", type=int, default=None, help="windows per optimizer step")
    args = parser.parse_args(argv)
    from battles.encode import ObservationEncoder

    enc = ObservationEncoder()
    try:
        cfg = PolicyConfig.preset(args.preset, vocab_size=enc.vocab.size, n_tokens=enc.n_tokens,
                                  n_numbers=enc.n_numbers, n_action_features=enc.n_action_features,
                                  dropout=args.dropout)
        kwargs = dict(context=args.context, bf16=args.bf16, strategy=args.strategy,
                      world_size=1 if args.strategy == "single" else args.world_size,
                      overhead_gb=args.overhead_gb)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    columns = []
    for ckpt in (False, True):
        try:
            columns.append(largest_micro_batch(cfg, args.gpu_gb, args.headroom, checkpointing=ckpt, **kwargs))
        except ValueError as err:
            print(f"{'with' if ckpt else 'without'} activation checkpointing: {err}")
    if not columns:
        raise SystemExit(1)
    print(format_report(cfg, args.preset, args.gpu_gb, args.headroom, columns, args.global_batch))


if __name__ == "__main__":
    main()
