"""The policy network: a turn encoder plus a causal transformer over a battle's decisions.

One decision is one observation: `tokens` (K entity ids, 0 = pad), `numbers` (F numeric
features) and `legal` (a 13-slot action mask). The turn encoder maps it to one d_model
vector; a pre-LN causal transformer with rotary positions runs over the decisions of a
battle; a policy head gives 13 logits (illegal actions masked) and a value head the
expected outcome in [-1, 1].

Attention window. Every layer lets a decision attend to itself and the previous
`max_context - 1` decisions (sliding-window attention, as in Mistral). For a battle no
longer than `max_context` this is plain causal attention over the whole battle. For a
longer one, `forward` over the whole battle and `step_batch` decision by decision compute
the same function: the banded attention above. Because positions are rotary (relative),
sliding needs no re-computation: the cache simply forgets keys older than the window.
The top layer's receptive field therefore reaches `n_layers * (max_context - 1)`
decisions back; the output at decision t does not depend on anything earlier, so a
forward pass over any suffix that starts at or before that point gives the same output.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Sizes assumed by the presets unless overridden (the encoder's real sizes come in later).
_DEFAULT_SIZES = {"vocab_size": 6000, "n_tokens": 120, "n_numbers": 200}

_PRESETS: dict[str, dict] = {
    # Parameter counts with the default sizes are pinned by tests/test_models.py.
    "tiny": dict(d_model=128, n_layers=2, n_heads=4, d_token=24, max_context=128),
    "small": dict(d_model=384, n_layers=8, n_heads=6, d_token=32, max_context=128),
    "medium": dict(d_model=640, n_layers=10, n_heads=10, d_token=48, max_context=256),
    "large": dict(d_model=1024, n_layers=15, n_heads=16, d_token=64, max_context=256),
}

# Target parameter counts of the presets (with the default sizes).
PRESET_TARGETS = {"tiny": 1e6, "small": 15e6, "medium": 50e6, "large": 200e6}


@dataclass
class PolicyConfig:
    """Sizes of the policy network; `preset()` gives the named ones."""

    vocab_size: int
    n_tokens: int  # K: entity tokens per decision
    n_numbers: int  # F: numeric features per decision
    n_actions: int = 13
    # > 0: the last n_actions * n_action_features numbers describe each action slot (what
    # that move or switch would do); a shared scorer reads them beside the decision's state.
    n_action_features: int = 0
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_token: int = 24  # width of the shared token embedding
    max_context: int = 128  # attention window, in decisions
    dropout: float = 0.0
    activation_checkpointing: bool = False
    mlp_ratio: int = 4
    rope_base: float = field(default=10000.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and f.name != "n_action_features":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(
                        f"PolicyConfig.{f.name}={value!r}: expected a positive integer"
                    )
            elif f.type == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"PolicyConfig.{f.name}={value!r}: expected true or false")
            elif f.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"PolicyConfig.{f.name}={value!r}: expected a number")
                setattr(self, f.name, float(value))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"PolicyConfig.dropout={self.dropout!r}: expected 0 <= dropout < 1")
        if self.n_action_features < 0 or self.n_actions * self.n_action_features > self.n_numbers:
            raise ValueError(
                f"PolicyConfig.n_action_features={self.n_action_features}: needs 0 <= "
                f"n_actions * n_action_features <= n_numbers={self.n_numbers}"
            )
        if self.rope_base <= 1.0:
            raise ValueError(f"PolicyConfig.rope_base={self.rope_base!r}: expected > 1")
        if self.vocab_size < 2:
            raise ValueError(
                f"PolicyConfig.vocab_size={self.vocab_size}: need id 0 (pad) and at least one token"
            )
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"PolicyConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}"
            )
        if (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError(
                f"PolicyConfig head size d_model/n_heads={self.d_model // self.n_heads} must be "
                "even for rotary positions; change d_model or n_heads"
            )

    @classmethod
    def preset(cls, name: str, **overrides) -> PolicyConfig:
        """The named preset (tiny, small, medium, large) with `overrides` applied."""
        if name not in _PRESETS:
            raise ValueError(f"unknown policy preset {name!r}; choose one of {sorted(_PRESETS)}")
        return cls.from_dict({**_DEFAULT_SIZES, **_PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        """A JSON-ready dict (the `model` section of a checkpoint's config.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PolicyConfig:
        """Build and validate a config; unknown or missing keys raise ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"policy config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown policy config key(s) {unknown}; known keys: {sorted(known)}")
        missing = [k for k in ("vocab_size", "n_tokens", "n_numbers") if k not in d]
        if missing:
            raise ValueError(f"policy config is missing required key(s) {missing}")
        return cls(**d)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


# ---------------------------------------------------------------------------- modules


def _rotary_angles(positions: torch.Tensor, head_dim: int, base: float) -> torch.Tensor:
    """Rotation angles (..., head_dim/2) for integer positions (...), in float32."""
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    return positions.to(torch.float32)[..., None] * inv_freq


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, hd) by angles whose cos/sin broadcast to (B, H, T, hd/2)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class TurnEncoder(nn.Module):
    """One decision's tokens, numbers and legal mask -> one d_model vector."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        # padding_idx keeps id 0 a zero vector, so pad slots add nothing.
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_token, padding_idx=0)
        # Flattening (not pooling) keeps each slot's role: slot i is always the same entity.
        self.tok_proj = nn.Linear(cfg.n_tokens * cfg.d_token, cfg.d_model)
        self.num_mlp = nn.Sequential(
            nn.Linear(cfg.n_numbers + cfg.n_actions, cfg.d_model),
            nn.GELU(),
            nn.Linear(cfg.d_model, cfg.d_model),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, tokens, numbers, legal):
        *lead, K = tokens.shape  # lead = (B, T) or (B,)
        e = self.tok_emb(tokens)  # (*lead, K, d_token)
        e = e.reshape(*lead, K * self.cfg.d_token)  # (*lead, K*d_token)
        dense = torch.cat([numbers, legal.to(numbers.dtype)], dim=-1)  # (*lead, F+13)
        return self.drop(self.tok_proj(e) + self.num_mlp(dense))  # (*lead, d_model)


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions and fused SDPA."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def qkv_rotated(self, x, cos, sin):
        """(B, T, C) -> q, k, v each (B, H, T, hd), q and k rotated."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, H, T, hd)
        v = v.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, H, T, hd)
        return _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin), v

    def attend(self, q, k, v, attn_mask=None, is_causal=False):
        """q (B, H, Tq, hd) over k, v (B, H, Tk, hd) -> (B, Tq, C)."""
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=p, is_causal=is_causal
        )  # (B, H, Tq, hd)
        return self.out(y)

    def out(self, y):
        """Attention output (B, H, Tq, hd) -> projected (B, Tq, C)."""
        B, H, Tq, hd = y.shape
        y = y.transpose(1, 2).reshape(B, Tq, H * hd)  # (B, Tq, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x))))


# A step's per-layer attention: takes the new q, k, v (B, H, 1, hd), stores k and v in
# each battle's cache, and returns each row's attention output (B, H, 1, hd).
CachedAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_mask):
        q, k, v = self.attn.qkv_rotated(self.ln_1(x), cos, sin)
        x = x + self.attn.attend(q, k, v, attn_mask, is_causal=attn_mask is None)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)

    def step(self, x, cos, sin, cached_attention: CachedAttention):
        """One new decision per row: x (B, 1, C), attending through each battle's cache."""
        q, k, v = self.attn.qkv_rotated(self.ln_1(x), cos, sin)  # (B, H, 1, hd)
        x = x + self.attn.out(cached_attention(q, k, v))  # (B, 1, C)
        return x + self.mlp(self.ln_2(x))  # (B, 1, C)


# ---------------------------------------------------------------------------- cache


class CachePool:
    """Keys and values of many battles in one tensor, so a batched step reads them at once.

    Each battle holds one row of `max_context` slots (a ring buffer: keys are stored already
    rotated at their absolute positions); the pool doubles its rows when all are taken.
    """

    def __init__(self, cfg: PolicyConfig, device, dtype):
        self.shape = (cfg.n_layers, cfg.n_heads, cfg.max_context, cfg.head_dim)
        L, H, W, hd = self.shape
        self.k = torch.zeros((L, 0, H, W, hd), device=device, dtype=dtype)  # (L, rows, H, W, hd)
        self.v = torch.zeros((L, 0, H, W, hd), device=device, dtype=dtype)  # (L, rows, H, W, hd)
        self.free: list[int] = []  # mutated in place: released caches append to it

    def take(self) -> int:
        """A free row (slots need no clearing: a step reads only the slots its battle wrote)."""
        if not self.free:
            n = self.k.shape[1]
            L, H, W, hd = self.shape
            more = self.k.new_zeros((L, max(n, 8), H, W, hd))
            self.k, self.v = torch.cat([self.k, more], 1), torch.cat([self.v, more], 1)
            self.free.extend(range(self.k.shape[1] - 1, n - 1, -1))
        return self.free.pop()


class BattleCache:
    """One battle's keys and values for incremental inference (see `step_batch`): a row of
    its pool, given back when the cache is garbage-collected."""

    def __init__(self, pool: CachePool):
        self.pool = pool
        self.row = pool.take()
        self.n_seen = 0  # decisions stepped so far = the next decision's position
        weakref.finalize(self, pool.free.append, self.row)

    def __len__(self) -> int:
        return self.n_seen


# ---------------------------------------------------------------------------- model


class PolicyTransformer(nn.Module):
    """Turn encoder + causal transformer over decisions + policy and value heads."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.turn = TurnEncoder(cfg)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.policy_head = nn.Linear(cfg.d_model, cfg.n_actions)
        if cfg.n_action_features:
            # The same small scorer for every slot: a move that would knock out scores the
            # same whichever slot it sits in.
            d_act = 64
            self.action_ctx = nn.Linear(cfg.d_model, d_act)
            self.action_scorer = nn.Sequential(
                nn.Linear(d_act + cfg.n_action_features, d_act), nn.GELU(), nn.Linear(d_act, 1)
            )
        self.value_head = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, 1)
        )
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by depth so the residual stream stays O(1).
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.padding_idx is not None and module.weight.device.type != "meta":
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    # ------------------------------------------------------------------ accounting

    def num_parameters(self) -> int:
        """Total number of parameters (embeddings included)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_decision(self, context: int | None = None, training: bool = True) -> float:
        """Model FLOPs per decision (nanoGPT/PaLM estimate), forward+backward unless not training.

        6 * N (N = parameters in matmuls, the embedding lookup excluded) plus
        12 * n_layers * d_model * context for attention scores and values; forward only is
        a third of it. `context` defaults to max_context.
        """
        T = self.cfg.max_context if context is None else context
        n = self.num_parameters() - self.turn.tok_emb.weight.numel()
        total = 6 * n + 12 * self.cfg.n_layers * self.cfg.d_model * T
        return float(total if training else total / 3)

    # ------------------------------------------------------------------ checks

    def _check_inputs(self, tokens, numbers, legal, lead: int) -> None:
        cfg = self.cfg
        want = {
            "tokens": (tokens, cfg.n_tokens),
            "numbers": (numbers, cfg.n_numbers),
            "legal": (legal, cfg.n_actions),
        }
        for name, (t, last) in want.items():
            if t.dim() != lead + 1 or t.shape[-1] != last:
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)}; expected {lead + 1} dims ending in "
                    f"{last} (check the encoder's sizes against this model's config)"
                )
        if tokens.shape[:-1] != numbers.shape[:-1] or tokens.shape[:-1] != legal.shape[:-1]:
            raise ValueError(
                f"tokens {tuple(tokens.shape)}, numbers {tuple(numbers.shape)} and legal "
                f"{tuple(legal.shape)} disagree on their leading dims"
            )
        if tokens.dtype != torch.int64 or legal.dtype != torch.bool:
            raise ValueError(
                f"tokens must be int64 and legal bool, got {tokens.dtype} and {legal.dtype}"
            )
        # An id check needs a device sync on GPU, so it only runs where it is free.
        if tokens.device.type == "cpu" and tokens.numel():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= cfg.vocab_size:
                raise ValueError(
                    f"token ids span [{lo}, {hi}] but vocab_size is {cfg.vocab_size}; the "
                    "encoder's vocabulary does not match this model"
                )

    def _heads(self, x, numbers, legal):
        """(…, C) hidden, (…, F) numbers, (…, 13) legal -> masked logits (…, 13), value (…)."""
        x = self.ln_f(x)
        logits = self.policy_head(x)  # (…, 13)
        k = self.cfg.n_action_features
        if k:
            A = self.cfg.n_actions
            feats = numbers[..., numbers.shape[-1] - A * k:].unflatten(-1, (A, k))  # (…, 13, k)
            ctx = self.action_ctx(x)[..., None, :].expand(*feats.shape[:-1], -1)  # (…, 13, d_act)
            inp = torch.cat([ctx, feats.to(ctx.dtype)], dim=-1)  # (…, 13, d_act + k)
            logits = logits + self.action_scorer(inp).squeeze(-1)  # (…, 13)
        # A finite minimum, not -inf: a row with no legal action (padding) stays NaN-free.
        logits = logits.masked_fill(~legal, torch.finfo(logits.dtype).min)
        value = torch.tanh(self.value_head(x)).squeeze(-1)  # (…)
        return logits, value

    # ------------------------------------------------------------------ training

    def forward(self, tokens, numbers, legal):
        """Whole windows: tokens (B,T,K), numbers (B,T,F), legal (B,T,13) -> logits, value.

        Pad shorter battles at the end (causality keeps real decisions blind to them).
        Returns logits (B, T, 13) with illegal actions at the dtype's finite minimum and
        value (B, T) in [-1, 1].
        """
        self._check_inputs(tokens, numbers, legal, lead=2)
        B, T, _ = tokens.shape
        x = self.turn(tokens, numbers, legal)  # (B, T, C)
        pos = torch.arange(T, device=x.device)
        ang = _rotary_angles(pos, self.cfg.head_dim, self.cfg.rope_base)  # (T, hd/2)
        cos, sin = ang.cos()[None, None], ang.sin()[None, None]  # (1, 1, T, hd/2)
        W = self.cfg.max_context
        attn_mask = None  # plain causal: SDPA's fused path
        if T > W:
            i = pos[:, None]
            attn_mask = (pos[None, :] <= i) & (pos[None, :] > i - W)  # (T, T) banded
        use_ckpt = self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if use_ckpt:
                x = checkpoint(block, x, cos, sin, attn_mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, attn_mask)  # (B, T, C)
        return self._heads(x, numbers, legal)

    # ------------------------------------------------------------------ inference

    def init_cache(self, device=None, dtype=None) -> BattleCache:
        """An empty cache for one new battle (device and dtype default to the model's)."""
        p = self.policy_head.weight
        key = (torch.device(device or p.device), dtype or p.dtype)
        pools = self.__dict__.setdefault("_cache_pools", {})  # not a submodule: never saved
        if key not in pools:
            pools[key] = CachePool(self.cfg, *key)
        return BattleCache(pools[key])

    @torch.inference_mode()  # also lets caches made inside inference_mode be stepped
    def step_batch(self, tokens, numbers, legal, caches: list[BattleCache]):
        """One new decision for each of B battles: tokens (B,K), numbers (B,F), legal (B,13).

        Row i continues the battle of `caches[i]` (battles may have different lengths) and
        appends its keys/values to it. Returns logits (B, 13) and value (B,), equal to
        `forward` over each battle's decisions so far (see the module docstring).
        """
        if self.training:
            raise RuntimeError("step_batch is for inference: call model.eval() first")
        self._check_inputs(tokens, numbers, legal, lead=1)
        B = tokens.shape[0]
        if len(caches) != B:
            raise ValueError(f"got {B} decisions but {len(caches)} caches; pass one per row")
        if len({id(c) for c in caches}) != B:
            raise ValueError("the same BattleCache appears twice; step one decision per battle")
        cfg = self.cfg
        shape = (cfg.n_layers, cfg.n_heads, cfg.max_context, cfg.head_dim)
        if any(c.pool.shape != shape for c in caches):
            raise ValueError("a BattleCache from a different model; use this model's init_cache()")
        pool = caches[0].pool
        if any(c.pool is not pool for c in caches):
            raise ValueError("caches of one step must share a device and dtype (one init_cache() setting)")

        W = cfg.max_context
        seen = [c.n_seen for c in caches]
        dev = pool.k.device
        rows = torch.tensor([c.row for c in caches], device=dev)
        slots = torch.tensor([n % W for n in seen], device=dev)
        # Keys each row attends to, itself included: a prefix of its slots until the ring
        # wraps, then all of them (the order of keys does not matter to attention).
        n_valid = [min(n + 1, W) for n in seen]
        n_max = max(n_valid)
        mask = None  # every row sees all n_max keys: no mask, SDPA's plain path
        if min(n_valid) < n_max:
            mask = torch.arange(n_max, device=dev) < torch.tensor(n_valid, device=dev)[:, None]  # (B, n)
            mask = mask[:, None, None]  # (B, 1, 1, n)

        pos = torch.tensor(seen, device=tokens.device)
        ang = _rotary_angles(pos, cfg.head_dim, cfg.rope_base)  # (B, hd/2)
        cos, sin = ang.cos()[:, None, None], ang.sin()[:, None, None]  # (B, 1, 1, hd/2)

        x = self.turn(tokens[:, None], numbers[:, None], legal[:, None])  # (B, 1, C)
        for layer, block in enumerate(self.blocks):

            def cached_attention(q, k, v, layer=layer):
                k_l, v_l = pool.k[layer], pool.v[layer]  # (rows, H, W, hd)
                k_l[rows, :, slots] = k[:, :, 0].to(k_l.dtype)  # (B, H, hd) into each row's slot
                v_l[rows, :, slots] = v[:, :, 0].to(v_l.dtype)
                keys = k_l[rows, :, :n_max].to(q.dtype)  # (B, H, n, hd)
                values = v_l[rows, :, :n_max].to(q.dtype)  # (B, H, n, hd)
                return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, H, 1, hd)

            x = block.step(x, cos, sin, cached_attention)  # (B, 1, C)
        for c in caches:
            c.n_seen += 1
        logits, value = self._heads(x[:, 0], numbers, legal)
        return logits, value  # (B, 13), (B,)
