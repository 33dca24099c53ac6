"""What the battle tracker holds: one Pokémon (Mon), one side (Side), and the battle-wide
fields with the look-ups every event handler shares (TrackedBattle).

battles/state.py's BattleState is a TrackedBattle that events change, one small handler per
event kind; the views (battles/view.py) read these objects.
"""

from __future__ import annotations

from battles.protocol import (
    STATS,
    UNKNOWN,
    Event,
    forme_ability,
    parse_details,
    parse_ident,
    strip_prefix,
    to_id,
)


class Mon:
    """One Pokémon as the viewer knows it."""

    __slots__ = (
        "side", "name", "species", "level", "gender", "hp", "status", "boosts", "moves",
        "item", "first_item", "ability", "first_ability", "tera", "terastallized", "active",
        "revealed", "volatiles", "types", "last_move", "pp_used", "previewed", "transformed",
        "version", "cache", "dyn_cache", "rested",
    )

    def __init__(self, side: str, name: str, species: str, level: int = 100, gender: str = ""):
        self.side, self.name = side, name
        self.species, self.level, self.gender = species, level, gender
        self.hp, self.status = 1.0, ""
        self.boosts = dict.fromkeys(STATS, 0)
        self.moves: list[str] = []  # move ids in the order they were revealed
        self.item = self.first_item = UNKNOWN
        self.ability = self.first_ability = UNKNOWN
        self.tera, self.terastallized = UNKNOWN, False
        self.active = self.revealed = self.previewed = False
        self.volatiles: set[str] = set()
        self.types: tuple[str, ...] | None = None  # set by typechange; None = the species' types
        self.last_move = ""
        self.pp_used: dict[str, int] = {}
        self.transformed: tuple[Mon, dict[str, int]] | None = None  # (target, PP spent as it)
        self.rested = False  # its sleep came from its own Rest (read only while it sleeps)
        # Bumped whenever a handler may change this Pokémon, so views of it can be reused.
        self.version = 0
        self.cache: tuple | None = None
        self.dyn_cache: tuple | None = None

    @property
    def fainted(self) -> bool:
        return self.status == "fnt"

    def reveal_move(self, move_id: str) -> None:
        if move_id and move_id not in self.moves and move_id not in ("struggle", "recharge"):
            self.moves.append(move_id)

    def reveal_item(self, item: str) -> None:
        self.item = to_id(item)
        if self.first_item == UNKNOWN:
            self.first_item = self.item

    def reveal_ability(self, ability: str, original: bool = True) -> None:
        self.ability = to_id(ability)
        # A transformed Pokémon or a battle-only forme shows an ability that is not its own.
        if original and self.first_ability == UNKNOWN and self.transformed is None and not forme_ability(
            to_id(self.species)
        ):
            self.first_ability = self.ability


class Side:
    """One player's side: its Pokémon by nickname, the active one, side conditions."""

    __slots__ = ("id", "name", "mons", "active", "conditions", "team_size", "tera_used", "preview", "view_cache",
                 "own_views")

    def __init__(self, side_id: str):
        self.id, self.name = side_id, ""
        self.mons: dict[str, Mon] = {}
        self.active: Mon | None = None
        self.conditions: dict[str, int] = {}  # condition id -> layers
        self.team_size = 6
        self.tera_used = False
        self.preview: list[Mon] = []  # team-preview placeholders not yet matched to a nickname
        self.view_cache: tuple | None = None  # (key, SideView): battles/view.py, battles/live.py
        self.own_views: dict = {}  # a player's own PokemonViews by request entry, battles/live.py


class TrackedBattle:
    """The public state of one battle; battles.state.BattleState applies events to it."""

    def __init__(self):
        self.gen = 9
        self.turn = 0
        self.sides = {"p1": Side("p1"), "p2": Side("p2")}
        self.weather = ""
        self.fields: set[str] = set()
        self.percent = True  # HP Percentage Mod (and every gen >= 7) shows HP in percent
        self.doubles = False
        self.tera_clause = False  # a rule that forbids terastallisation
        self.started = False
        self.ended = False
        self.winner = ""
        self.errors: list[str] = []

    def mon(self, ident: str, details: str = "") -> Mon | None:
        """The Pokémon named by 'p1a: Nick' (created on first sight when details are given)."""
        side_id, name = parse_ident(ident)
        side = self.sides.get(side_id)
        if side is None or not name:
            return None
        mon = side.mons.get(name)
        if mon is not None:
            mon.version += 1
        elif details:
            species, level, gender = parse_details(details)
            mon = self._claim_preview(side, name, species) or Mon(side_id, name, species)
            mon.name, mon.species, mon.level, mon.gender = name, species, level, gender
            mon.version += 1
            side.mons[name] = mon
        return mon

    @staticmethod
    def _claim_preview(side: Side, name: str, species: str) -> Mon | None:
        # A team-preview entry ('Urshifu-*') becomes the Pokémon that switches in as it.
        sid = to_id(species)
        for i, mon in enumerate(side.preview):
            pid = to_id(mon.species)
            if pid == sid or mon.species.endswith("-*") and sid.startswith(pid):
                return side.preview.pop(i)
        for i, mon in enumerate(side.preview):
            if sid.startswith(to_id(mon.species.split("-")[0])):
                return side.preview.pop(i)
        return None

    def of_mon(self, event: Event) -> Mon | None:
        """The Pokémon named by an [of] tag, if any."""
        return self.mon(event.tags["of"]) if event.tags.get("of") else None

    def reveal_from_tag(self, event: Event, target: Mon | None) -> None:
        """'[from] item: Leftovers' / '[from] ability: X' reveal the [of] Pokémon's, else the target's."""
        source = event.tags.get("from", "")
        kind, name = strip_prefix(source)
        if kind not in ("item", "ability"):
            return
        owner = self.of_mon(event) or target
        if owner is None:
            return
        if kind == "item":
            owner.reveal_item(name)
        else:
            owner.reveal_ability(name)
