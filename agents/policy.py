"""`policy:PATH`: a poke-env player driven by a trained PolicyTransformer checkpoint.

Each battle keeps its own key/value cache, so a decision costs one new step of the model,
not a re-read of the battle. Decisions of all concurrent battles that wait at the same
moment are batched into one forward pass: `choose_move` queues its observation and the
batch runs on the next turn of the event loop. The chosen action is always legal: the
logits of illegal actions are masked before sampling, and the index is turned back into a
poke-env order by `battles.actions`.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import torch
from poke_env.player import Player

from battles.actions import index_to_order, legal_mask
from battles.encode import ObservationEncoder
from battles.view import view_from_battle
from models.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


class PolicyPlayer(Player):
    """Plays by a policy checkpoint; `temperature=0` (or greedy) takes the arg-max."""

    def __init__(
        self,
        checkpoint: str,
        *,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
        device: str = "cpu",
        threads: int = 1,
        **player_kwargs,
    ):
        if temperature < 0:
            raise ValueError(f"policy temperature must be >= 0, got {temperature}")
        self.encoder = ObservationEncoder()
        self.model, self.info = load_checkpoint(
            checkpoint,
            expected_encoder_version=self.encoder.version,
            expected_vocab_hash=self.encoder.vocab.hash,
            device=device,
        )
        self.model.eval()
        if device == "cpu" and threads:
            # Many small matmuls per decision: more threads only add contention (see bench_policy).
            torch.set_num_threads(threads)
        self.checkpoint = str(checkpoint)
        self.temperature = 0.0 if greedy else float(temperature)
        self.device = torch.device(device)
        self._rng = np.random.default_rng(seed)
        self._caches: dict[str, object] = {}
        self._last: dict[str, tuple[object, int]] = {}  # battle -> (request id, action) already stepped
        self._queue: list[tuple] = []
        self._flush_pending = False
        self.decisions = 0
        self.batches = 0
        super().__init__(**player_kwargs)

    # -- deciding ---------------------------------------------------------------------
    async def choose_move(self, battle):
        """Queue this battle's observation; the next batched forward pass answers it."""
        rqid = (battle.last_request or {}).get("rqid")
        tag = battle.battle_tag
        # A request seen twice (e.g. resent after an error) must not step the cache again.
        if tag in self._last and rqid is not None and self._last[tag][0] == rqid:
            return index_to_order(self._last[tag][1], battle, self)
        view = view_from_battle(battle)
        tokens, numbers = self.encoder.encode(view)
        legal = legal_mask(view)
        if not legal.any():
            return self.choose_default_move()
        future = asyncio.get_running_loop().create_future()
        self._queue.append((tag, tokens, numbers, legal, future))
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)
        index = await future
        self._last[tag] = (rqid, index)
        return index_to_order(index, battle, self, view=view)

    def _flush(self) -> None:
        """One forward pass over every queued decision."""
        self._flush_pending = False
        queue, self._queue = self._queue, []
        if not queue:
            return
        try:
            tags = [q[0] for q in queue]
            caches = [self._caches.setdefault(t, self.model.init_cache()) for t in tags]
            tokens = torch.from_numpy(np.stack([q[1] for q in queue])).long().to(self.device)
            numbers = torch.from_numpy(np.stack([q[2] for q in queue])).float().to(self.device)
            legal = torch.from_numpy(np.stack([q[3] for q in queue])).to(self.device)
            logits, _ = self.model.step_batch(tokens, numbers, legal, caches)
            choices = self._pick(logits.float().cpu().numpy(), legal.cpu().numpy())
        except Exception as err:  # never leave a battle waiting forever
            for *_, future in queue:
                if not future.done():
                    future.set_exception(err)
            return
        self.decisions += len(queue)
        self.batches += 1
        for (*_, future), index in zip(queue, choices):
            if not future.done():
                future.set_result(int(index))

    def _pick(self, logits: np.ndarray, legal: np.ndarray) -> np.ndarray:
        """Arg-max or temperature sampling, over legal actions only."""
        logits = np.where(legal, logits, -np.inf)
        if self.temperature == 0:
            return logits.argmax(axis=1)
        z = logits / self.temperature
        z = z - z.max(axis=1, keepdims=True)
        cdf = np.exp(z).cumsum(axis=1)  # illegal actions add exactly 0, so are never picked
        u = self._rng.random(len(cdf))[:, None] * cdf[:, -1:]
        return np.minimum((cdf <= u).sum(axis=1), cdf.shape[1] - 1)

    def _battle_finished_callback(self, battle) -> None:
        self._caches.pop(battle.battle_tag, None)
        self._last.pop(battle.battle_tag, None)
