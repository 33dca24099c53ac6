"""Training data from the trajectory store: padded battle windows, data mixes, a held-out split.

Everything streams: shards are read one Parquet row group at a time, shuffling happens
inside a bounded block of row groups, and a position can be skipped to without reading
the data before it (only the small scalar columns are read to count samples).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from battles.shards import reading
from battles.trajectories import N_ACTIONS, Trajectory, list_shards, read_row_group, row_groups

_INDEX_COLUMNS = ["battle_id", "source", "format", "rating", "outcome", "encoder_version",
                  "n_decisions", "agent"]


@dataclass
class Selection:
    """Whom one source of a mix learns from: agent spec patterns and outcomes (empty: all)."""

    agents: list[str] = field(default_factory=list)  # 'tactician', 'search:*', 'policy:*'
    outcomes: list[int] = field(default_factory=list)  # [1]: won battles only


SELECTABLE = tuple(f.name for f in fields(Selection))
# Keys of a sample that run along decisions; collate pads these.
_PER_STEP = {"tokens": 0, "numbers": 0, "legal": False, "action": -1, "mask": False,
             "loss_mask": False, "teacher": 0}
_CHOICE_CHUNK = 1024


def is_validation(battle_id: str, fraction: float) -> bool:
    """Whether a battle belongs to the held-out split (stable hash of its id; both players agree)."""
    digest = hashlib.blake2b(battle_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < fraction


def in_subset(battle_id: str, fraction: float) -> bool:
    """Whether a battle belongs to the first `fraction` of the data: a hash independent of the
    validation split, so smaller subsets nest in larger ones (a scaling study's points)."""
    digest = hashlib.blake2b(battle_id.encode(), digest_size=8, person=b"qabra-subset").digest()
    return int.from_bytes(digest, "big") / 2.0**64 < fraction


def _tuple(value) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, (str, int)):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class Filters:
    """Which trajectories a dataset keeps; None means no constraint."""

    formats: tuple[str, ...] | None = None
    min_rating: float | None = None  # rows without a rating are dropped when set
    outcomes: tuple[int, ...] | None = None
    source: tuple[str, ...] | None = None  # values of the store's `source` column
    # Patterns (fnmatch) on the spec of the agent that made the decisions: 'tactician',
    # 'search:*', 'policy:*'. Rows with no agent (human replays) match none.
    agents: tuple[str, ...] | None = None
    encoder_version: int | None = None
    split: str | None = None  # 'train', 'val' or None (all)
    val_fraction: float = 0.05
    subset: float = 1.0  # keep this share of the battles (nested: see in_subset)

    def __post_init__(self) -> None:
        for name in ("formats", "outcomes", "source", "agents"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        if self.agents is not None and not all(isinstance(a, str) and a for a in self.agents):
            raise ValueError(f"agents={self.agents}: give agent spec patterns such as 'tactician' "
                             "or 'search:*'")
        if self.split not in (None, "train", "val"):
            raise ValueError(f"split={self.split!r}: use 'train', 'val' or None")
        if not 0.0 < self.subset <= 1.0:
            raise ValueError(f"subset={self.subset}: must be in (0, 1]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction}: must be in [0, 1)")
        if self.outcomes and not set(self.outcomes) <= {-1, 0, 1}:
            raise ValueError(f"outcomes={self.outcomes}: allowed values are 1, 0, -1")

    def mask(self, table: pa.Table) -> np.ndarray:
        """Boolean mask of the rows of an index table (scalar columns) that pass."""
        keep = np.asarray(table["n_decisions"]) > 0
        for name, column in (("formats", "format"), ("source", "source")):
            allowed = getattr(self, name)
            if allowed is not None:
                keep &= np.asarray(pc.fill_null(pc.is_in(table[column], pa.array(allowed)), False))
        if self.min_rating is not None:
            rating = np.asarray(pc.fill_null(table["rating"], np.nan), dtype=np.float64)
            keep &= rating >= self.min_rating
        if self.outcomes is not None:
            keep &= np.isin(np.asarray(table["outcome"]), self.outcomes)
        if self.encoder_version is not None:
            keep &= np.asarray(table["encoder_version"]) == self.encoder_version
        if self.agents is not None:
            specs = table["agent"].to_pylist() if "agent" in table.column_names else [None] * len(keep)
            keep &= np.array([a is not None and any(fnmatch.fnmatchcase(a, p) for p in self.agents)
                              for a in specs], dtype=bool)
        if self.split is not None:
            val = np.array([is_validation(b, self.val_fraction)
                            for b in table["battle_id"].to_pylist()], dtype=bool)
            keep &= val if self.split == "val" else ~val
        if self.subset < 1.0:
            keep &= np.array([in_subset(b, self.subset) for b in table["battle_id"].to_pylist()], dtype=bool)
        return keep


def window_plan(n_decisions: int, window: int | None) -> list[tuple[int, int, int]]:
    """(start, length, loss_from) per window; together the windows cover every decision once.

    Battles longer than the window are cut at 0, W, 2W, ...; the last window is moved back
    to end at the last decision so it keeps a full context, and ``loss_from`` marks where
    its not-yet-covered decisions begin.
    """
    t = n_decisions
    if t <= 0:
        return []
    if window is None or t <= window:
        return [(0, t, 0)]
    plan = []
    for start in range(0, t, window):
        if start + window <= t:
            plan.append((start, window, 0))
        else:
            plan.append((t - window, window, start - (t - window)))
    return plan


def _n_windows(n_decisions: np.ndarray, window: int | None) -> np.ndarray:
    if window is None:
        return (n_decisions > 0).astype(np.int64)
    return -(-n_decisions.astype(np.int64) // window)


def make_sample(traj: Trajectory, start: int, length: int, loss_from: int,
                width: int | None) -> dict:
    """One padded window of a trajectory as tensors (width None: no padding)."""
    w = length if width is None else width
    end = start + length
    k, f = traj.n_tokens, traj.n_numbers
    tokens = np.zeros((w, k), np.int64)
    tokens[:length] = traj.tokens[start:end]
    numbers = np.zeros((w, f), np.float32)
    numbers[:length] = traj.numbers[start:end]
    legal = np.zeros((w, N_ACTIONS), bool)
    legal[:length] = traj.legal[start:end]
    action = np.full(w, -1, np.int64)
    action[:length] = traj.action[start:end]
    mask = np.zeros(w, bool)
    mask[:length] = True
    loss_mask = np.zeros(w, bool)
    loss_mask[loss_from:length] = True
    teacher = np.zeros((w, N_ACTIONS), np.float32)
    if traj.teacher is not None:
        teacher[:length] = traj.teacher[start:end]
    return {
        "tokens": torch.from_numpy(tokens), "numbers": torch.from_numpy(numbers),
        "legal": torch.from_numpy(legal), "action": torch.from_numpy(action),
        "mask": torch.from_numpy(mask), "loss_mask": torch.from_numpy(loss_mask),
        "teacher": torch.from_numpy(teacher),
        "has_teacher": torch.tensor(traj.teacher is not None),
        "outcome": torch.tensor(float(traj.outcome)),
        "start": torch.tensor(start),
        "battle_id": traj.battle_id, "player": traj.player, "source": traj.source,
    }


def collate(samples: Sequence[dict]) -> dict:
    """Stack samples into a batch (B, W, ...), padding per-decision keys to the longest."""
    assert samples, "collate needs at least one sample"
    width = max(s["mask"].shape[0] for s in samples)
    batch = {}
    for key, value in samples[0].items():
        if isinstance(value, str):
            batch[key] = [s[key] for s in samples]
        elif key in _PER_STEP:
            out = torch.full((len(samples), width, *value.shape[1:]), _PER_STEP[key],
                             dtype=value.dtype)
            for i, s in enumerate(samples):
                out[i, : s[key].shape[0]] = s[key]
            batch[key] = out
        else:
            batch[key] = torch.stack([s[key] for s in samples])
    return batch


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _Stream:
    """Samples of one source for one consumer (a DataLoader worker on one rank)."""

    def __init__(self, name: str, paths, filters: Filters, window: int | None, seed: int,
                 shuffle: bool, buffer: int) -> None:
        self.name = name
        self.paths = [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        self.units = row_groups(self.paths)
        self.filters, self.window, self.seed = filters, window, seed
        self.shuffle, self.buffer = shuffle, max(1, buffer)
        self.tag = zlib.crc32(name.encode())
        self._index: dict[tuple[Path, int], tuple[np.ndarray, np.ndarray]] = {}
        self._sizes: tuple[int, int] | None = None

    def index(self, unit: tuple[Path, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(row numbers passing the filters, windows per row) of one row group; cached."""
        key = (unit[0], unit[1])
        if key not in self._index:
            with reading(unit[0]), pq.ParquetFile(unit[0]) as pf:
                have = set(pf.schema_arrow.names)
                table = pf.read_row_group(unit[1], columns=[c for c in _INDEX_COLUMNS if c in have])
            rows = np.flatnonzero(self.filters.mask(table))
            counts = _n_windows(np.asarray(table["n_decisions"])[rows], self.window)
            self._index[key] = (rows, counts)
        return self._index[key]

    def plan(self, consumer: int, n_consumers: int) -> list[tuple[tuple, np.ndarray, np.ndarray]]:
        """This consumer's share: whole row groups round-robin, or rows when too few groups."""
        entries = [(u, *self.index(u)) for u in self.units]
        entries = [e for e in entries if len(e[1])]
        if len(entries) >= n_consumers:
            return entries[consumer::n_consumers]
        share, seen = [], 0
        for unit, rows, counts in entries:
            pick = (seen + np.arange(len(rows))) % n_consumers == consumer
            seen += len(rows)
            if pick.any():
                share.append((unit, rows[pick], counts[pick]))
        return share

    def _rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.tag, *keys])

    def empty_error(self, where: str) -> ValueError:
        """The error for a source with nothing to draw from."""
        return ValueError(
            f"source {self.name!r}: no trajectories under {self.paths} pass the filters "
            f"{self.filters}{where}; add data, loosen the filters, or use fewer workers"
        )

    def iterate(self, consumer: int, n_consumers: int, epochs: int | None,
                skip: int = 0, first_epoch: int = 0) -> Iterator[dict]:
        """Yield samples epoch after epoch (forever if epochs is None), skipping the first `skip`."""
        plan = self.plan(consumer, n_consumers)
        total = sum(int(c.sum()) for _, _, c in plan)
        if total == 0:
            if epochs is None:  # an endless stream with nothing in it would hang the mix
                raise self.empty_error(f" for worker {consumer} of {n_consumers} (ranks x workers)")
            return
        epoch = first_epoch
        skip_epochs, skip = divmod(skip, total)
        epoch += skip_epochs if epochs is None else min(skip_epochs, epochs)
        while epochs is None or epoch < first_epoch + epochs:
            yield from self._epoch(plan, consumer, epoch, skip)
            skip = 0
            epoch += 1

    def _epoch(self, plan, consumer: int, epoch: int, skip: int) -> Iterator[dict]:
        order = (self._rng(consumer, epoch).permutation(len(plan)) if self.shuffle
                 else np.arange(len(plan)))
        block, size, n_block = [], 0, 0
        for j in order:
            block.append(plan[j])
            size += int(plan[j][2].sum())
            if size >= self.buffer or j == order[-1]:
                if skip >= size:
                    skip -= size  # a whole block is passed over without reading it
                else:
                    yield from self._block(block, consumer, epoch, n_block, skip)
                    skip = 0
                block, size, n_block = [], 0, n_block + 1

    def _block(self, block, consumer: int, epoch: int, n_block: int, skip: int) -> Iterator[dict]:
        trajs = [read_row_group(unit[0], unit[1], rows=rows) for unit, rows, _ in block]
        items = [(b, r, *w) for b, group in enumerate(trajs) for r, traj in enumerate(group)
                 for w in window_plan(traj.n_decisions, self.window)]
        assert len(items) == sum(int(c.sum()) for _, _, c in block), "index and data disagree"
        if self.shuffle:
            perm = self._rng(consumer, epoch, n_block).permutation(len(items))
            items = [items[i] for i in perm]
        for b, r, start, length, loss_from in items[skip:]:
            traj = trajs[b][r]
            self._check_sizes(traj)
            yield make_sample(traj, start, length, loss_from, self.window)

    def _check_sizes(self, traj: Trajectory) -> None:
        sizes = (traj.n_tokens, traj.n_numbers)
        if self._sizes is None:
            self._sizes = sizes
        elif sizes != self._sizes:
            raise ValueError(
                f"source {self.name!r}: shards under {self.paths} mix observation sizes "
                f"(K, F) = {self._sizes} and {sizes} (battle {traj.battle_id!r}); "
                "filter by encoder_version or keep one encoder's shards per dataset"
            )


def _filters(kwargs: dict) -> Filters:
    names = {f.name for f in fields(Filters)}
    unknown = set(kwargs) - names
    if unknown:
        raise ValueError(f"unknown filter arguments {sorted(unknown)}; use {sorted(names)}")
    return Filters(**kwargs)


class TrajectoryDataset(IterableDataset):
    """One pass over trajectory shards as padded windows (window=None: whole battles).

    Filters are keyword arguments of `Filters` (formats, min_rating, outcomes, source,
    encoder_version, split, val_fraction); nothing passing them gives an empty pass. Shards
    are split across DataLoader workers and distributed ranks; call `set_epoch` to reshuffle
    when shuffle=True.
    """

    def __init__(self, paths, window: int | None = 128, *, shuffle: bool = False, seed: int = 0,
                 shuffle_buffer: int = 1024, rank: int | None = None,
                 world_size: int | None = None, **filters) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window={window}: must be a positive number of decisions or None")
        if not _shards_of("dataset", paths):
            raise ValueError(f"no trajectory shards (*.parquet) found in {paths}")
        self.stream = _Stream("dataset", paths, _filters(filters), window, seed, shuffle,
                              shuffle_buffer)
        # Resolved here, in the main process: a spawned DataLoader worker has no process group.
        self.rank, self.world_size = _rank_world(rank, world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle of the next pass."""
        self.epoch = epoch

    def num_samples(self) -> int:
        """Samples in one full pass over all ranks and workers."""
        return sum(int(self.stream.index(u)[1].sum()) for u in self.stream.units)

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        rank, world = self.rank, self.world_size
        yield from self.stream.iterate(rank * num_workers + worker, world * num_workers,
                                       epochs=1, first_epoch=self.epoch)


class DataMix(IterableDataset):
    """An endless weighted mixture of sources, e.g. DataMix({'human': 0.3, 'selfplay': 0.7}, ...).

    ``sources`` is either a mapping name -> shard paths, or shard paths whose `source`
    column names the mix keys. Each draw picks a source by weight (a fixed function of the
    seed, rank, worker and draw number) and takes its next sample; a source that runs out
    starts a new, reshuffled epoch. `state_dict()` holds the number of samples drawn per
    worker; to track it with DataLoader workers, iterate through `MixLoader`.

    ``select`` chooses whom each source learns from: source name -> {"agents": patterns,
    "outcomes": [1]} (see `Filters`), e.g. {"selfplay": {"agents": ["tactician"]}}.
    """

    def __init__(self, weights: Mapping[str, float], sources, *, window: int | None = 128,
                 seed: int = 0, shuffle_buffer: int = 1024, rank: int | None = None,
                 world_size: int | None = None, select: Mapping[str, Mapping] | None = None,
                 **filters) -> None:
        if not weights:
            raise ValueError("DataMix needs at least one source weight")
        bad = {k: w for k, w in weights.items() if not (w >= 0 and np.isfinite(w))}
        if bad or sum(weights.values()) <= 0:
            raise ValueError(f"mix weights {dict(weights)} must be finite, >= 0, with a positive sum")
        if window is not None and window < 1:
            raise ValueError(f"window={window}: must be a positive number of decisions or None")
        base = _filters(filters)
        select = {k: asdict(v) if is_dataclass(v) else dict(v) for k, v in (select or {}).items()}
        for name, chosen in select.items():
            if name not in weights:
                raise ValueError(f"select names source {name!r}, which the mix {dict(weights)} lacks; "
                                 "select only sources the mix draws from")
            bad = set(chosen) - set(SELECTABLE)
            if bad:
                raise ValueError(f"select.{name}: unknown key(s) {sorted(bad)}; use {list(SELECTABLE)}")
        self.select = {k: {f: list(v) for f, v in c.items() if v} for k, c in select.items()}
        self.names = sorted(k for k, w in weights.items() if w > 0)
        probs = np.array([weights[k] for k in self.names], dtype=np.float64)
        self.cdf = np.cumsum(probs / probs.sum())
        self.seed = seed
        # Resolved here, in the main process: a spawned DataLoader worker has no process group.
        self.rank, self.world_size = _rank_world(rank, world_size)
        self.weights = dict(weights)
        self.streams = {}
        by_name = isinstance(sources, Mapping)
        present = set() if by_name else _sources_in(sources)
        for name in self.names:
            if by_name:
                if name not in sources:
                    raise ValueError(f"mix weight given for {name!r} but sources has only "
                                     f"{sorted(sources)}; add its shard paths")
                paths, flt = sources[name], base
            else:
                paths, flt = sources, replace(base, source=(name,))
            flt = replace(flt, **{k: tuple(v) for k, v in self.select.get(name, {}).items()})
            shards = _shards_of(name, paths)
            if not shards or (not by_name and name not in present):
                raise ValueError(f"source {name!r} has weight {weights[name]} but no trajectories "
                                 f"were found in {paths}; build or download them, or set its "
                                 "weight to 0")
            self.streams[name] = _Stream(name, paths, flt, window, seed, True, shuffle_buffer)
        self._position: list[int] = []
        # Which worker's batch comes next: a resumed DataLoader starts at worker 0, so worker w
        # takes the role (w + next) % num_workers to keep the uninterrupted run's batch order.
        self._next_worker = 0

    def _choices(self, consumer: int, start: int) -> Iterator[int]:
        """Source index of every draw from `start` on, a pure function of (seed, consumer, draw)."""
        chunk, offset = divmod(start, _CHOICE_CHUNK)
        while True:
            u = np.random.default_rng([self.seed, 0x6D6978, consumer, chunk]).random(_CHOICE_CHUNK)
            idx = np.minimum(np.searchsorted(self.cdf, u, side="right"), len(self.names) - 1)
            yield from idx[offset:].tolist()
            chunk, offset = chunk + 1, 0

    def _counts_before(self, consumer: int, n: int) -> np.ndarray:
        counts = np.zeros(len(self.names), np.int64)
        for chunk in range(-(-n // _CHOICE_CHUNK)):
            u = np.random.default_rng([self.seed, 0x6D6978, consumer, chunk]).random(_CHOICE_CHUNK)
            idx = np.minimum(np.searchsorted(self.cdf, u, side="right"), len(self.names) - 1)
            counts += np.bincount(idx[: n - chunk * _CHOICE_CHUNK], minlength=len(self.names))
        return counts

    def _begin(self, num_workers: int) -> None:
        if not self._position:
            self._position = [0] * num_workers
        elif len(self._position) != num_workers:
            raise ValueError(f"this mix position was saved with {len(self._position)} DataLoader "
                             f"workers, now {num_workers}; resume with the same num_workers")

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        rank, world = self.rank, self.world_size
        self._begin(num_workers)
        worker = (worker + self._next_worker) % num_workers
        consumer, n_consumers = rank * num_workers + worker, world * num_workers
        start = self._position[worker]
        skips = self._counts_before(consumer, start)
        streams = [self.streams[name].iterate(consumer, n_consumers, None, int(skips[i]))
                   for i, name in enumerate(self.names)]
        for i, src in enumerate(self._choices(consumer, start)):
            sample = next(streams[src])
            sample["worker"] = torch.tensor(worker)
            if get_worker_info() is None:
                self._position[worker] = start + i + 1
            yield sample

    def state_dict(self) -> dict:
        """The mix position: samples drawn in all and per DataLoader worker."""
        return {"samples": sum(self._position), "per_worker": list(self._position),
                "next_worker": self._next_worker, "seed": self.seed,
                "weights": dict(self.weights)}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from a saved position (same seed, weights and num_workers)."""
        for key in ("seed", "weights"):
            if state[key] != getattr(self, key):
                raise ValueError(f"mix state was saved with {key}={state[key]!r}, this mix has "
                                 f"{getattr(self, key)!r}; resume with the same {key}")
        self._position = [int(n) for n in state["per_worker"]]
        self._next_worker = int(state.get("next_worker", 0))


def _shards_of(name: str, paths) -> list[Path]:
    try:
        return list_shards(paths)
    except FileNotFoundError as err:
        raise ValueError(f"source {name!r}: {err}; check the paths given for it") from err


def _sources_in(paths) -> set[str]:
    """Distinct values of the `source` column (reads only that column)."""
    found: set[str] = set()
    for shard in _shards_of("mix", paths):
        found.update(pq.read_table(shard, columns=["source"])["source"].unique().to_pylist())
    return found


class MixLoader:
    """A DataLoader over a DataMix that keeps the mix position current in the main process."""

    def __init__(self, mix: DataMix, batch_size: int, num_workers: int = 0, **loader_kwargs):
        if loader_kwargs.get("persistent_workers"):
            raise ValueError("MixLoader cannot track positions with persistent_workers=True")
        self.mix, self.num_workers = mix, num_workers
        # A DataLoader draws a base seed from torch's global generator whenever an iterator
        # starts; its own seeded generator keeps a resumed run's global RNG on the same path.
        loader_kwargs.setdefault("generator", torch.Generator().manual_seed(mix.seed))
        self.loader = DataLoader(mix, batch_size=batch_size, num_workers=num_workers,
                                 collate_fn=collate, **loader_kwargs)

    def __iter__(self) -> Iterator[dict]:
        self.mix._begin(max(1, self.num_workers))
        for batch in self.loader:
            if self.num_workers > 0:
                # The DataLoader hands out workers' batches in turn and in order, so counting
                # the samples that reached us gives each worker's exact position.
                worker = int(batch["worker"][0])
                assert (batch["worker"] == worker).all(), "a batch comes from one worker"
                self.mix._position[worker] += len(batch["worker"])
                self.mix._next_worker = (worker + 1) % self.num_workers
            yield batch

    def state_dict(self) -> dict:
        """The mix position (see DataMix.state_dict)."""
        return self.mix.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        """Resume the mix position (see DataMix.load_state_dict)."""
        self.mix.load_state_dict(state)

