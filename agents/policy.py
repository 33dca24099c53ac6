"""`policy:PATH`: a poke-env player driven by a trained PolicyTransformer checkpoint.

Each battle keeps its own key/value cache, so a decision costs one new step of the model,
not a re-read of the battle. Every decision that waits at the same moment, in all battles
of all policy players of the process that use the same checkpoint (both sides of a
self-play match, say), is answered by one forward pass: `choose_move` queues its
observation and the pass runs on the next turn of the event loop. Players of one
checkpoint share its loaded model. The chosen action is always legal: the logits of
illegal actions are masked before sampling, and the index is turned back into a poke-env
order by `battles.live`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from pathlib import Path

import numpy as np
import torch
from poke_env.player import Player

from battles.actions import legal_mask
from battles.encode import ObservationEncoder
from battles.live import index_to_order, view_from_battle
from models.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


class _Shared:
    """One checkpoint's model in this process, and the players waiting on its next forward pass."""

    def __init__(self, checkpoint: str, device: str, encoder: ObservationEncoder):
        self.model, self.info = load_checkpoint(checkpoint, expected_encoder_version=encoder.version,
                                                expected_vocab_hash=encoder.vocab.hash, device=device)
        self.model.eval()
        self.device = torch.device(device)
        self.passes = 0  # forward passes run (each may serve several players)
        self._waiting: dict[asyncio.AbstractEventLoop, list[PolicyPlayer]] = {}

    def wait(self, player: PolicyPlayer) -> None:
        """Answer this player's queue in the pass that runs on the next turn of the loop."""
        loop = asyncio.get_running_loop()
        waiting = self._waiting.setdefault(loop, [])
        if not waiting:
            loop.call_soon(self._run, loop)
        if player not in waiting:
            waiting.append(player)

    def _run(self, loop) -> None:
        """One forward pass over the queued decisions of every waiting player."""
        rows = []
        for player in self._waiting.pop(loop, []):
            player._flush()
            rows.append((player, player._batch))
        queue = [q for _, queue in rows for q in queue]
        if not queue:
            return
        try:
            tokens = torch.from_numpy(np.stack([q[1] for q in queue])).long().to(self.device)
            numbers = torch.from_numpy(np.stack([q[2] for q in queue])).float().to(self.device)
            legal = np.stack([q[3] for q in queue])
            logits, _ = self.model.step_batch(tokens, numbers, torch.from_numpy(legal).to(self.device),
                                              [q[4] for q in queue])
            logits = logits.float().cpu().numpy()
            self.passes += 1
            start = 0
            for player, mine in rows:
                end = start + len(mine)
                player._answer(mine, player._pick(logits[start:end], legal[start:end]))
                player._batch = []  # answered: its caches and futures are not kept past the pass
                start = end
        except Exception as err:  # never leave a battle waiting forever
            for *_, future in queue:
                if not future.done():
                    future.set_exception(err)


_SHARED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # _checkpoint_key -> _Shared


def _checkpoint_key(checkpoint: str, device: str) -> tuple | None:
    """Players share a loaded model only while its weights file is the same (a checkpoint
    rewritten in place is loaded again); None when there is no such file to compare."""
    path = Path(checkpoint).resolve()
    try:
        st = (path / "model.safetensors").stat()
    except OSError:
        return None
    return str(path), str(device), st.st_mtime_ns, st.st_size


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
        key = _checkpoint_key(checkpoint, device)
        self._shared = _SHARED.get(key) if key else None
        if self._shared is None:
            self._shared = _Shared(checkpoint, device, self.encoder)
            if key:
                _SHARED[key] = self._shared
        self.model, self.info = self._shared.model, self._shared.info
        if device == "cpu" and threads:
            # Many small matmuls per decision: more threads only add contention (see bench_policy).
            torch.set_num_threads(threads)
        self.checkpoint = str(checkpoint)
        self.temperature = 0.0 if greedy else float(temperature)
        self._rng = np.random.default_rng(seed)
        self._caches: dict[str, object] = {}
        self._last: dict[str, tuple[object, int]] = {}  # battle -> (request id, action) already stepped
        self._queue: list[tuple] = []  # (battle tag, tokens, numbers, legal, cache, future)
        self._batch: list[tuple] = []  # the queue handed to the forward pass under way
        self.decisions = 0
        self.refused = 0  # orders the simulator refused (answered by its default choice)
        self.batches = 0  # forward passes this player's decisions took part in
        super().__init__(**player_kwargs)

    # -- deciding ---------------------------------------------------------------------
    async def choose_move(self, battle):
        """Queue this battle's observation; the next batched forward pass answers it."""
        rqid = (battle.last_request or {}).get("rqid")
        tag = battle.battle_tag
        # A request seen twice was resent because the simulator refused our order: the cache
        # must not step again, and the same order would be refused again, so Showdown chooses.
        if tag in self._last and rqid is not None and self._last[tag][0] == rqid:
            self.refused += 1
            log.log(logging.WARNING if self.refused == 1 else logging.DEBUG,
                    "battle %s: the simulator refused our order for request %s; sending the default choice "
                    "(counted in PolicyPlayer.refused, logged once)", tag, rqid)
            return self.choose_default_move()
        view = view_from_battle(battle)
        tokens, numbers = self.encoder.encode(view)
        legal = legal_mask(view)
        if not legal.any():
            return self.choose_default_move()
        cache = self._caches.get(tag)
        if cache is None:
            if len(self._caches) > 2 * len(self._battles) + 16:  # battles given up on (errors) keep none
                self._caches = {t: c for t, c in self._caches.items() if t in self._battles}
            cache = self._caches[tag] = self.model.init_cache()
        future = asyncio.get_running_loop().create_future()
        self._queue.append((tag, tokens, numbers, legal, cache, future))
        self._shared.wait(self)
        index = await future
        self._last[tag] = (rqid, index)
        return index_to_order(index, battle, self, view=view)

    def _flush(self) -> None:
        """Hand this player's queued decisions to the forward pass about to run."""
        self._batch, self._queue = self._queue, []

    def _answer(self, queue: list[tuple], choices: np.ndarray) -> None:
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
