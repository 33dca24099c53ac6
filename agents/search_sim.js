'use strict';
// The search bot's simulator side: a Pokémon Showdown Battle built from a spec (one full
// guess of a battle, made by agents/search_spec.py), cloned through the simulator's own state
// serialisation, and the choices each side may make in it. Used by search_worker.js.
//
//   const {buildBattle, Cloner, choicesFor, step} = require('./search_sim')(psDir);

const path = require('path');

module.exports = function load(psDir) {
	const sim = require(path.join(path.resolve(psDir), 'dist', 'sim'));
	const {State} = require(path.join(path.resolve(psDir), 'dist', 'sim', 'state'));
	const {Battle, PRNG} = sim;

	const STATS = ['atk', 'def', 'spa', 'spd', 'spe'];
	const GEN1_STAGE = [[1, 1.5, 2, 2.5, 3, 3.5, 4], [1, 0.66, 0.5, 0.4, 0.33, 0.28, 0.25]];
	const GEN1_TRAPS = new Set(['wrap', 'bind', 'clamp', 'firespin']);

	// -- a small seeded RNG (the simulator's own PRNG is reseeded from it per simulation) --
	function makeRng(seed) {
		let s = (seed >>> 0) || 0x9e3779b9;
		return () => {
			s ^= s << 13; s >>>= 0;
			s ^= s >>> 17;
			s ^= s << 5; s >>>= 0;
			return s / 4294967296;
		};
	}

	function freshSeed(rng) {
		return [0, 1, 2, 3].map(() => Math.floor(rng() * 65536));
	}

	// -- building a battle from a spec ----------------------------------------------------------
	function effectState(battle, mon, id, fields, source) {
		const condition = battle.dex.conditions.get(id);
		const state = battle.initEffectState({id: condition.id, name: condition.name, target: mon});
		if (source) {
			state.source = source;
			state.sourceSlot = source.getSlot();
		}
		if (condition.duration) state.duration = condition.duration;
		return Object.assign(state, fields || {});
	}

	function setStatus(battle, mon, m, rng) {
		mon.status = m.status;
		// Rest's sleep is the Pokémon's own (its source is itself): Sleep Clause ignores it.
		mon.statusState = effectState(battle, mon, m.status, null, m.status === 'slp' && m.rested ? mon : null);
		if (m.status === 'slp') {
			// Sleep lasts 1-7 turns in gen 1 (Rest: 2); `sleep_turns` have passed already.
			const total = m.rested ? (battle.gen === 1 ? 2 : 3) : (battle.gen === 1 ? 7 : 3);
			const left = Math.max(1, total - m.sleep_turns);
			const time = 1 + Math.floor(rng() * left);
			Object.assign(mon.statusState, {startTime: time + m.sleep_turns, time});
		} else if (m.status === 'tox') {
			mon.statusState.stage = m.toxic_turns || 0;
			if (battle.gen <= 2) mon.volatiles.residualdmg = effectState(battle, mon, 'residualdmg', {counter: m.toxic_turns || 0});
		}
	}

	function hpFromPercent(frac, maxhp, rng) {
		// An HP that Showdown shows as this percentage (ceil(100 * hp / maxhp)), drawn uniformly.
		const pct = Math.round(frac * 100);
		if (pct >= 100) return maxhp;
		const lo = Math.max(1, Math.floor((pct - 1) * maxhp / 100) + 1);
		const hi = Math.max(lo, Math.min(maxhp - 1, Math.floor(pct * maxhp / 100)));
		return lo + Math.floor(rng() * (hi - lo + 1));
	}

	function gen1ModifiedStats(mon) {
		for (const stat of STATS) {
			const b = mon.boosts[stat];
			let value = Math.floor(mon.storedStats[stat] * GEN1_STAGE[b >= 0 ? 0 : 1][Math.abs(b)]);
			if (b > 0) value = Math.min(value, 999);
			mon.modifiedStats[stat] = Math.max(1, value);
		}
		if (mon.status === 'par') mon.modifyStat('spe', 0.25);
		if (mon.status === 'brn') mon.modifyStat('atk', 0.5);
	}

	function applyVolatile(battle, mon, foe, name, m, rng) {
		const [id, arg] = name.split(':');
		const dex = battle.dex;
		if (id === 'substitute') {
			const hp = Math.floor(mon.maxhp / 4) + (battle.gen === 1 ? 1 : 0);
			mon.volatiles.substitute = effectState(battle, mon, 'substitute', {hp});
		} else if (id === 'disabled' && arg) {
			const slotIndex = mon.moveSlots.findIndex(s => s.id === arg);
			mon.volatiles.disable = effectState(battle, mon, 'disable', {move: arg, slotIndex, time: 1 + Math.floor(rng() * 7)});
		} else if (id === 'twoturnmove' && arg) {
			if (battle.gen === 1) {
				mon.volatiles.twoturnmove = effectState(battle, mon, 'twoturnmove', {move: arg});
				if (arg === 'dig' || arg === 'fly') mon.volatiles.invulnerability = effectState(battle, mon, 'invulnerability');
			} else {
				mon.addVolatile('twoturnmove', foe, dex.getActiveMove(arg));
			}
		} else if (id === 'partiallytrapped' && foe) {
			const move = GEN1_TRAPS.has(m.trap_move) || battle.gen > 1 ? (m.trap_move || 'wrap') : 'wrap';
			const sourceEffect = dex.getActiveMove(move);
			if (battle.gen === 1) {
				const duration = 1 + Math.floor(rng() * 3);
				foe.volatiles.partialtrappinglock = effectState(battle, foe, 'partialtrappinglock',
					{move, duration, totalDuration: duration + 1, damage: 0, locked: mon});
			}
			mon.volatiles.partiallytrapped = effectState(battle, mon, 'partiallytrapped', {sourceEffect}, foe);
		} else if (id === 'transform') {
			return !!m.transform_into; // done before the boosts, with the Pokémon it copied
		} else if (id === 'leechseed' || id === 'trapped') {
			if (foe) mon.addVolatile(id, foe);
		} else if (dex.conditions.get(id).exists) {
			mon.addVolatile(id, foe);
		} else {
			return false;
		}
		return true;
	}

	function applyLock(battle, mon, move) {
		// A move the request says the active Pokémon is locked into (Thrash, Outrage, Rage...).
		if (mon.volatiles.twoturnmove || mon.volatiles.mustrecharge || mon.volatiles.partialtrappinglock) return;
		if (move === 'rage') {
			mon.volatiles.rage = effectState(battle, mon, 'rage');
		} else if (battle.gen === 1 && GEN1_TRAPS.has(move)) {
			// Our own Wrap continuing: the lock lives on us, the trap on the foe.
			const foe = mon.side.foe.active[0];
			if (foe) applyVolatile(battle, foe, mon, 'partiallytrapped', {trap_move: move}, () => 0.5);
		} else if (move === 'bide') {
			mon.volatiles.bide = effectState(battle, mon, 'bide', {time: 1, damage: 0, lastDamage: 0});
		} else {
			mon.volatiles.lockedmove = effectState(battle, mon, 'lockedmove', {move, time: 1, accuracy: 255, duration: 2});
		}
	}

	function buildBattle(spec) {
		const rng = makeRng(spec.seed || 1);
		const battle = new Battle({formatid: spec.format, seed: freshSeed(rng)});
		battle.setPlayer('p1', {name: 'p1', team: spec.sides[0].team});
		battle.setPlayer('p2', {name: 'p2', team: spec.sides[1].team});
		if (battle.requestState === 'teampreview') {
			const order = side => 'team ' + side.pokemon.map((_, i) => i + 1).join('');
			battle.makeChoices(order(battle.sides[0]), order(battle.sides[1]));
		}
		const skipped = [];
		for (const [i, side] of battle.sides.entries()) {
			const s = spec.sides[i];
			let left = 0;
			for (const [j, mon] of side.pokemon.entries()) {
				const m = s.mons[j];
				if (m.stats) {
					mon.baseStoredStats = Object.assign({}, m.stats);
					mon.storedStats = Object.assign({}, m.stats);
					if (mon.modifiedStats) mon.modifiedStats = Object.assign({}, m.stats);
				}
				if (m.maxhp) mon.maxhp = mon.baseMaxhp = m.maxhp;
				mon.clearVolatile();
				if (m.fainted) {
					mon.hp = 0;
					mon.fainted = true;
					mon.status = 'fnt';
					continue;
				}
				left++;
				mon.hp = m.hp !== undefined && m.hp !== null ? m.hp : hpFromPercent(m.hp_frac, mon.maxhp, rng);
				if (m.status) setStatus(battle, mon, m, rng);
				for (const slot of mon.moveSlots) {
					if (m.pp && slot.id in m.pp) slot.pp = m.pp[slot.id];
					else if (m.pp_used && slot.id in m.pp_used) slot.pp = Math.max(0, slot.maxpp - m.pp_used[slot.id]);
				}
				if (m.item !== undefined) mon.item = m.item;
				if (m.terastallized && m.tera) {
					mon.terastallized = m.tera;
					mon.teraType = m.tera;
				}
			}
			side.pokemonLeft = left;
			side.totalFainted = side.pokemon.length - left;
			if (s.tera_used) for (const mon of side.pokemon) mon.canTerastallize = null;
		}
		// Volatiles and boosts (active Pokémon only) once both sides are in place.
		for (const [i, side] of battle.sides.entries()) {
			const m = spec.sides[i].mons[0];
			const mon = side.active[0];
			const foe = side.foe.active[0] && !side.foe.active[0].fainted ? side.foe.active[0] : null;
			mon.switchFlag = !!spec.sides[i].must_switch; // fainted, or U-turn and the like mid-turn
			for (const [cond, layers] of Object.entries(spec.sides[i].conditions || {})) {
				for (let k = 0; k < Math.max(1, layers); k++) side.addSideCondition(cond, mon);
			}
			if (mon.fainted) continue;
			if (mon.terastallized) mon.setType(mon.terastallized);
			if (m.last_move) mon.lastMove = battle.dex.getActiveMove(m.last_move);
			if (m.transform_into) {
				const target = side.foe.pokemon.find(p => p.name === m.transform_into);
				if (!target || !mon.transformInto(target, null)) skipped.push('transform');
			}
			if (m.moves_now) {
				// Transformed: the request shows the moves it copied (the foe's real ones), 5 PP each.
				mon.moveSlots = m.moves_now.map(([id, pp]) => {
					const move = battle.dex.moves.get(id);
					return {move: move.name, id: move.id, pp, maxpp: 5, target: move.target, disabled: false, used: false, virtual: true};
				});
			}
			for (const stat of STATS.concat(['accuracy', 'evasion'])) mon.boosts[stat] = (m.boosts || {})[stat] || 0;
			if (mon.modifiedStats) gen1ModifiedStats(mon);
			for (const name of m.volatiles || []) {
				try {
					if (!applyVolatile(battle, mon, foe, name, m, rng)) skipped.push(name);
				} catch (err) {
					skipped.push(name);
				}
			}
			if (m.lock) applyLock(battle, mon, m.lock);
			if (m.last_move && m.choice_locked !== false && mon.getItem().isChoice &&
				mon.moveSlots.some(slot => slot.id === m.last_move)) {
				mon.volatiles.choicelock = effectState(battle, mon, 'choicelock', {move: m.last_move});
			}
		}
		const field = spec.field || {};
		const anyActive = battle.sides[0].active[0];
		// Switch-in abilities at the start (Drought, Electric Surge) may have set a field: reset it.
		battle.field.clearWeather();
		battle.field.clearTerrain();
		for (const id of Object.keys(battle.field.pseudoWeather)) battle.field.removePseudoWeather(id);
		if (field.weather) battle.field.setWeather(field.weather, anyActive);
		if (field.terrain) battle.field.setTerrain(field.terrain, anyActive);
		for (const pseudo of field.pseudo || []) battle.field.addPseudoWeather(pseudo, anyActive);
		battle.queue.clear();
		// endTurn() works out what each side may choose (Disable, Choice locks, trapping) and
		// makes the move request, as the real battle did at the end of the turn before.
		if (battle.sides.some(side => side.active[0].switchFlag)) {
			battle.turn = spec.turn || battle.turn;
			battle.makeRequest('switch');
		} else {
			battle.turn = Math.max(0, (spec.turn || battle.turn) - 1);
			battle.endTurn();
		}
		battle.log = [];
		battle.inputLog = [];
		battle.sentLogPos = 0;
		return {battle, skipped};
	}

	// -- cloning ---------------------------------------------------------------------------------
	// Each simulation restores the root state into one reused Battle instead of building a new
	// one (State.deserializeBattle constructs every Side and Pokemon again, which costs about
	// twice as much). This mirrors State.deserializeBattle after its `new Battle(...)`; keys a
	// reused object has but the serialised state lacks (they were undefined) are cleared.
	const SKIP = {
		battle: new Set(['dex', 'gen', 'ruleTable', 'id', 'log', 'inherit', 'format', 'teamGenerator',
			'HIT_SUBSTITUTE', 'NOT_FAIL', 'FAIL', 'SILENT_FAIL', 'field', 'sides', 'prng', 'hints',
			'deserialized', 'queue', 'actions', 'formatid']),
		field: new Set(['id', 'battle']),
		side: new Set(['battle', 'team', 'pokemon', 'choice', 'activeRequest']),
		pokemon: new Set(['side', 'battle', 'set', 'name', 'fullname', 'id', 'happiness', 'level',
			'pokeball', 'baseMoveSlots']),
		choice: new Set(['switchIns']),
	};

	function wipe(obj, state, skip) {
		for (const key of Object.keys(obj)) {
			if (!(key in state) && !skip.has(key) && typeof obj[key] !== 'function') obj[key] = undefined;
		}
	}

	function teamOrder(sideState) {
		return sideState.team.split(sideState.team.length > 9 ? ',' : '').map(Number);
	}

	class Cloner {
		constructor(battle) {
			this.state = State.serializeBattle(battle);
			this.text = JSON.stringify(this.state);
			this.state = JSON.parse(this.text); // no object shared with the live battle
			this.battle = State.deserializeBattle(this.text);
			// Each side's Pokemon in their original (team) order, as deserializeBattle made them.
			this.original = this.battle.sides.map((side, i) => teamOrder(this.state.sides[i]).map(pos => side.pokemon[pos - 1]));
			this.sets = this.original.map(mons => mons.map(mon => mon.set));
		}

		restore(seed) {
			const battle = this.battle;
			const state = this.state;
			for (const [i, s] of state.sides.entries()) {
				const ordered = new Array(this.original[i].length);
				teamOrder(s).forEach((pos, j) => { ordered[pos - 1] = this.original[i][j]; });
				battle.sides[i].pokemon = ordered;
			}
			wipe(battle, state, SKIP.battle);
			State.deserialize(state, battle, SKIP.battle, battle);
			wipe(battle.field, state.field, SKIP.field);
			State.deserializeField(state.field, battle.field);
			let activeRequests = false;
			for (const [i, s] of state.sides.entries()) {
				const side = battle.sides[i];
				wipe(side, s, SKIP.side);
				s.pokemon.forEach((p, j) => wipe(side.pokemon[j], p, SKIP.pokemon));
				wipe(side.choice, s.choice, SKIP.choice);
				State.deserializeSide(s, side);
				this.original[i].forEach((mon, j) => { mon.set = this.sets[i][j]; }); // side.team holds these
				activeRequests = activeRequests || s.activeRequest === undefined;
			}
			if (activeRequests) {
				const requests = battle.getRequests(battle.requestState);
				state.sides.forEach((s, i) => { battle.sides[i].activeRequest = s.activeRequest === null ? null : requests[i]; });
			}
			battle.prng = new PRNG(seed);
			battle.queue.list = State.deserializeWithRefs(state.queue, battle);
			battle.hints = new Set(state.hints);
			battle.log = [];
			return battle;
		}

		exact() {
			// True when a restored battle serialises exactly as the root did.
			const again = State.serializeBattle(this.restore(this.state.prng));
			delete again.formatid;
			const root = JSON.parse(this.text);
			delete root.formatid;
			return canonical(again) === canonical(root);
		}
	}

	function canonical(value) {
		if (Array.isArray(value)) return '[' + value.map(canonical).join(',') + ']';
		if (value && typeof value === 'object') {
			return '{' + Object.keys(value).filter(k => value[k] !== undefined).sort()
				.map(k => JSON.stringify(k) + ':' + canonical(value[k])).join(',') + '}';
		}
		return JSON.stringify(value);
	}

	// -- choices ----------------------------------------------------------------------------
	function choicesFor(battle, i) {
		const side = battle.sides[i];
		const req = side.activeRequest;
		if (!req || req.wait || battle.ended) return [''];
		const switches = [];
		side.pokemon.forEach((mon, j) => {
			if (j >= side.active.length && !mon.fainted) switches.push(`switch ${j + 1}`);
		});
		if (req.forceSwitch) return switches.length ? switches : ['pass'];
		const active = req.active[0];
		const out = [];
		for (const move of active.moves) {
			if (move.disabled) continue;
			out.push(`move ${move.id}`);
			if (active.canTerastallize) out.push(`move ${move.id} terastallize`);
		}
		if (!active.trapped) out.push(...switches);
		return out.length ? out : ['default'];
	}

	function choose(battle, i, choice) {
		if (!choice) return true;
		const side = battle.sides[i];
		if (side.choose(choice)) return true;
		side.clearChoice();
		side.autoChoose();
		return false;
	}

	function step(battle, c1, c2) {
		// Both sides choose, then the turn runs; [accepted1, accepted2] (a refused choice is
		// replaced by the simulator's default one).
		const ok = [choose(battle, 0, c1), choose(battle, 1, c2)];
		if (battle.allChoicesDone()) battle.commitChoices();
		return ok;
	}

	function summary(battle) {
		return {
			turn: battle.turn,
			weather: battle.field.weather,
			terrain: battle.field.terrain,
			pseudo: Object.keys(battle.field.pseudoWeather),
			sides: battle.sides.map((side, i) => ({
				conditions: Object.fromEntries(Object.entries(side.sideConditions).map(([k, v]) => [k, v.layers || 1])),
				choices: choicesFor(battle, i),
				pokemon: side.pokemon.map(mon => ({
					name: mon.name, species: mon.species.id, active: mon.isActive && side.active[0] === mon,
					hp: mon.hp, maxhp: mon.maxhp, status: mon.fainted ? 'fnt' : mon.status,
					boosts: Object.assign({}, mon.boosts), volatiles: Object.keys(mon.volatiles),
					moves: mon.moveSlots.map(s => s.id), pp: Object.fromEntries(mon.moveSlots.map(s => [s.id, s.pp])),
				})),
			})),
		};
	}

	return {
		Battle, PRNG, State, STATS, makeRng, freshSeed, buildBattle, Cloner, choicesFor, step, summary,
	};
};
