"""Vocabulary and observation encoder: deterministic ids, fixed layout, unknown counting."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from battles import encode as enc
from battles import matchup
from battles.encode import (
    ENCODER_VERSION,
    N_NUMBERS,
    N_TOKENS,
    NONE,
    PAD,
    UNK,
    ObservationEncoder,
    Vocabulary,
    build_vocabulary,
    default_vocabulary,
    encode,
    legal_mask,
)
from battles.log_views import views_from_log
from battles.protocol import UNKNOWN
from tests.test_view import GEN1


def test_shipped_vocabulary_is_the_deterministic_build():
    shipped, built = default_vocabulary(), build_vocabulary()
    assert built.hash == shipped.hash and built.tokens == shipped.tokens
    assert shipped.tokens[:3] == ["<pad>", "<unknown>", "<none>"]
    assert shipped.size == len(shipped.tokens) > 3000
    assert {"tauros", "greattusk", "ogerponwellspringtera"} <= set(shipped.kinds["species"])
    assert {"leftovers", "boosterenergy", "choicescarf"} <= set(shipped.kinds["item"])
    assert {"snow", "raindance"} <= set(shipped.kinds["weather"])
    assert "stellar" in shipped.kinds["type"] and "stealthrock" in shipped.kinds["side_condition"]


def test_ids_specials_and_unknown_counting():
    vocab = Vocabulary.from_dict(default_vocabulary().to_dict())
    assert vocab.id("species", "tauros") == vocab.tokens.index("species:tauros")
    assert vocab.id("item", "") == NONE
    assert vocab.id("item", UNKNOWN) == UNK and not vocab.unknown  # not knowing is not a miss
    assert vocab.id("move", "notamove") == UNK and vocab.id("move", "notamove") == UNK
    assert vocab.unknown[("move", "notamove")] == 2 and vocab.misses == 2
    assert PAD == 0 and "<pad>" == vocab.tokens[PAD]


def test_vocabulary_round_trips_and_rejects_a_wrong_hash(tmp_path):
    vocab = default_vocabulary()
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json").hash == vocab.hash
    data = json.loads((tmp_path / "v.json").read_text())
    data["kinds"]["species"].append("notaspecies")
    with pytest.raises(ValueError, match="hash"):
        Vocabulary.from_dict(data)
    with pytest.raises(ValueError, match="cannot read vocabulary"):
        Vocabulary.load(tmp_path / "absent.json")


def test_encoding_layout():
    decisions = views_from_log({"id": "t", "format": "gen1ou", "log": GEN1}, "p1")
    view = decisions[0].view
    encoder = ObservationEncoder()
    assert (encoder.n_tokens, encoder.n_numbers, encoder.version) == (N_TOKENS, N_NUMBERS, ENCODER_VERSION)
    tokens, numbers = encode(view)
    assert tokens.dtype == np.int32 and tokens.shape == (N_TOKENS,)
    assert numbers.dtype == np.float32 and numbers.shape == (N_NUMBERS,)
    vocab = encoder.vocab
    assert tokens[0] == vocab.id("gen", "gen1") and tokens[1] == NONE  # no weather
    first = enc.GLOBAL_TOKENS
    width = len(enc.MON_TOKENS)
    assert tokens[first] == vocab.id("species", "tauros")
    assert tokens[first + 1] == NONE  # gen 1: no item
    # p1 has shown two of six: slots 3-6 of its side are unseen team members, not padding.
    assert tokens[first + 2 * width] == UNK and tokens[first + 5 * width] == UNK
    assert tokens[first + 6 * width] == vocab.id("species", "chansey")
    mon0 = len(enc.GLOBAL_FEATURES)
    assert numbers[mon0] == 1.0 and numbers[mon0 + 2] == pytest.approx(1.0)  # present, full HP
    assert numbers[mon0 + enc.MON_FEATURES.index("predicted_moves")] == 1.0
    assert legal_mask(view).dtype == np.bool_ and legal_mask(view).shape == (13,)


def test_a_changed_field_changes_the_encoding_and_the_cache_is_safe():
    view = views_from_log({"id": "t", "format": "gen1ou", "log": GEN1}, "p1")[0].view
    encoder = ObservationEncoder(Vocabulary.from_dict(default_vocabulary().to_dict()))
    tokens, numbers = encoder.encode(view)
    hurt = replace(view.own.pokemon[0], hp=0.25, status="par")
    view2 = replace(view, own=replace(view.own, pokemon=(hurt,) + view.own.pokemon[1:]))
    tokens2, numbers2 = encoder.encode(view2)
    entities = enc.N_NUMBERS - matchup.N_GLOBAL - 13 * enc.ACTION_FEATURES  # before the matchups
    assert (tokens != tokens2).sum() == 1 and (numbers[:entities] != numbers2[:entities]).sum() == 1
    assert (numbers[entities:] != numbers2[entities:]).any()  # a slower, weaker active fights worse
    again = encoder.encode(view)  # from the cache
    fresh = ObservationEncoder().encode(view)
    assert (again[0] == fresh[0]).all() and (again[1] == fresh[1]).all() and (again[0] == tokens).all()
    odd = replace(hurt, item="notanitem")
    view3 = replace(view, own=replace(view.own, pokemon=(odd,) + view.own.pokemon[1:]))
    encoder.encode(view3)
    encoder.encode(view3)
    assert encoder.vocab.unknown[("item", "notanitem")] == 2  # counted every time, cache or not
