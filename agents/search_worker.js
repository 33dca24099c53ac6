'use strict';
// The search bot's simulator worker: Pokémon Showdown's own Battle as the transition model.
//
//   node agents/search_worker.js <pokemon-showdown package folder>
//
// One JSON object per line on stdin, one answer per line on stdout ({id, ok, ...} or
// {id, ok: false, error}). Commands:
//   ping                         -> {pid}
//   build  {spec}                -> {state}: the battle built from a spec, summarised
//   search {spec, ms, iterations, c, depth, seed, root}
//                                -> {visits, values, opp_visits, iterations, timing}
//   bench  {spec, ms, depth}     -> clone and step timings
// A spec is one full guess of a battle (both teams, HP, statuses, boosts, volatiles, PP,
// field) built by agents/search.py. The battle is built once per spec and cloned through
// the simulator's own state serialisation (State.serializeBattle/deserializeBattle) for
// every simulation. The search is decoupled UCT over both sides' simultaneous choices,
// open loop (each simulation draws fresh random numbers), leaves scored by evaluate().

const path = require('path');
const readline = require('readline');

const psDir = process.argv[2];
if (!psDir) {
	process.stderr.write('usage: node search_worker.js <pokemon-showdown package folder>\n');
	process.exit(2);
}
const sim = require(path.join(path.resolve(psDir), 'dist', 'sim'));
const {State} = require(path.join(path.resolve(psDir), 'dist', 'sim', 'state'));
const {Battle, PRNG} = sim;

const STATS = ['atk', 'def', 'spa', 'spd', 'spe'];
const GEN1_STAGE = [[1, 1.5, 2, 2.5, 3, 3.5, 4], [1, 0.66, 0.5, 0.4, 0.33, 0.28, 0.25]];
const STATUS_COST = {slp: 0.35, frz: 0.6, par: 0.2, tox: 0.2, psn: 0.12, brn: 0.2};
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
	mon.statusState = effectState(battle, mon, m.status);
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
		if (m.last_move && mon.getItem().isChoice && mon.moveSlots.some(slot => slot.id === m.last_move)) {
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

// -- evaluation -----------------------------------------------------------------------------
// A side's material: every Pokémon left is worth 0.5 plus its HP fraction, less what its
// status costs it; the active one adds its boosts and a Substitute. On top, the coming
// exchange between the two active Pokémon: each one's best expected damage next turn (the
// simulator's own damage formula), the faster one striking first.
function statusCost(mon) {
	switch (mon.status) {
	case 'slp': return Math.min(0.5, 0.1 + 0.08 * (mon.statusState.time || 1));
	case 'frz': return mon.battle.gen === 1 ? 0.8 : 0.3;
	case 'par': return 0.25;
	case 'tox': return 0.2;
	case 'brn': return 0.2;
	case 'psn': return 0.1;
	default: return 0;
	}
}

function sideScore(side) {
	let score = 0;
	for (const mon of side.pokemon) {
		if (mon.fainted || mon.hp <= 0) continue;
		score += (0.5 + mon.hp / mon.maxhp) * (1 - statusCost(mon));
	}
	const active = side.active[0];
	if (active && !active.fainted) {
		let boosts = 0;
		for (const stat of STATS) boosts += Math.max(-3, Math.min(3, active.boosts[stat]));
		score += 0.08 * boosts;
		if (active.volatiles.substitute) score += 0.15;
	}
	return score;
}

function activeMove(battle, id) {
	const cache = battle.dex.searchMoveCache || (battle.dex.searchMoveCache = new Map());
	if (!cache.has(id)) cache.set(id, battle.dex.getActiveMove(id));
	return cache.get(id);
}

function threat(battle, att, dfd) {
	// The best expected share of dfd's current HP that att's attacks take next turn (<= 1).
	if (att.status === 'slp' || att.status === 'frz' || att.volatiles.mustrecharge) return 0;
	let best = 0;
	for (const slot of att.moveSlots) {
		if (slot.pp <= 0 || slot.disabled) continue;
		const move = activeMove(battle, slot.id);
		if (move.category === 'Status' || move.selfdestruct || move.damageCallback && move.id !== 'seismictoss') continue;
		let dmg;
		try {
			dmg = battle.actions.getDamage(att, dfd, move, true);
		} catch (err) {
			continue;
		}
		if (typeof dmg !== 'number' || dmg <= 0) continue;
		const acc = move.accuracy === true ? 1 : move.accuracy / 100;
		const hits = Array.isArray(move.multihit) ? 3 : (move.multihit || 1);
		const frac = Math.min(1, dmg * hits / Math.max(1, dfd.hp)) * acc * (move.flags.charge ? 0.5 : 1);
		if (frac > best) best = frac;
	}
	return best * (att.status === 'par' ? 0.75 : 1);
}

function exchange(battle) {
	// Expected material p1 gains minus p2 gains from the next exchange of the active Pokémon.
	const [a, b] = battle.sides.map(side => side.active[0]);
	if (!a || !b || a.fainted || b.fainted) return 0;
	const mine = threat(battle, a, b);
	const theirs = threat(battle, b, a);
	const aFirst = a.getStat('spe') >= b.getStat('spe');
	let gain = mine * b.hp / b.maxhp + (mine >= 1 ? 0.5 : 0);
	let loss = theirs * a.hp / a.maxhp + (theirs >= 1 ? 0.5 : 0);
	if (aFirst && mine >= 1) loss = 0;
	if (!aFirst && theirs >= 1) gain = 0;
	return 0.5 * (gain - loss);
}

function moveRate(battle, att, dfd, id) {
	// Expected damage per turn of one of att's moves on dfd, in fractions of dfd's max HP.
	const move = activeMove(battle, id);
	if (move.category === 'Status' || move.selfdestruct || move.damageCallback && move.id !== 'seismictoss') return 0;
	let dmg;
	try {
		dmg = battle.actions.getDamage(att, dfd, move, true);
	} catch (err) {
		return 0;
	}
	if (typeof dmg !== 'number' || dmg <= 0) return 0;
	const acc = move.accuracy === true ? 1 : move.accuracy / 100;
	const hits = Array.isArray(move.multihit) ? 3 : (move.multihit || 1);
	const slow = move.flags.charge ? 0.5 : move.flags.recharge ? 0.6 : 1;
	return dmg * hits * acc * slow / dfd.maxhp;
}

function damageRate(battle, att, dfd) {
	// att's best expected damage per turn on dfd, in fractions of dfd's max HP.
	let best = 0;
	for (const slot of att.moveSlots) {
		if (slot.pp <= 0 || slot.disabled) continue;
		const rate = moveRate(battle, att, dfd, slot.id);
		if (rate > best) best = rate;
	}
	return best * (att.status === 'par' ? 0.75 : 1);
}

function greedy(battle, i, rng) {
	// The rollout policy: mostly the most damaging move, sometimes anything legal; forced
	// switches bring in the Pokémon with the best damage trade against the foe.
	const legal = choicesFor(battle, i);
	if (legal.length === 1 || rng() < 0.15) return legal[Math.floor(rng() * legal.length)];
	const side = battle.sides[i];
	const me = side.active[0];
	const foe = side.foe.active[0];
	if (!foe || foe.fainted) return legal[Math.floor(rng() * legal.length)];
	let best = legal[0];
	let bestScore = -Infinity;
	for (const choice of legal) {
		let score;
		if (choice.startsWith('switch')) {
			if (!side.activeRequest.forceSwitch) continue;
			const mon = side.pokemon[Number(choice.split(' ')[1]) - 1];
			score = damageRate(battle, mon, foe) - damageRate(battle, foe, mon);
		} else {
			score = moveRate(battle, me, foe, choice.split(' ')[1]);
		}
		if (score > bestScore) {
			bestScore = score;
			best = choice;
		}
	}
	return best;
}

function idleTurns(mon) {
	if (mon.status === 'frz') return mon.battle.gen === 1 ? 99 : 1;
	if (mon.status === 'slp') return mon.statusState.time || 1;
	return mon.volatiles.mustrecharge ? 1 : 0;
}

function duel(battle) {
	// The two active Pokémon fight it out at their best expected damage per turn (the faster
	// first, sleepers and rechargers idle): p1's material gain minus p2's, half weighted,
	// since either side may switch instead.
	const [a, b] = battle.sides.map(side => side.active[0]);
	if (!a || !b || a.fainted || b.fainted) return 0;
	const ra = damageRate(battle, a, b);
	const rb = damageRate(battle, b, a);
	const ha0 = a.hp / a.maxhp;
	const hb0 = b.hp / b.maxhp;
	let ha = ha0;
	let hb = hb0;
	let ia = idleTurns(a);
	let ib = idleTurns(b);
	const aFirst = a.getStat('spe') >= b.getStat('spe');
	for (let t = 0; t < 6 && ha > 0 && hb > 0; t++, ia--, ib--) {
		const hitA = ia > 0 ? 0 : ra;
		const hitB = ib > 0 ? 0 : rb;
		if (aFirst) {
			hb -= hitA;
			if (hb > 0) ha -= hitB;
		} else {
			ha -= hitB;
			if (ha > 0) hb -= hitA;
		}
	}
	const gain = hb0 - Math.max(0, hb) + (hb <= 0 ? 0.5 : 0);
	const loss = ha0 - Math.max(0, ha) + (ha <= 0 ? 0.5 : 0);
	return 0.5 * (gain - loss);
}

function evaluate(battle, leaf = 'duel') {
	// The position's value for p1, in [0, 1].
	if (battle.ended) return battle.winner === 'p1' ? 1 : battle.winner === 'p2' ? 0 : 0.5;
	const [s1, s2] = battle.sides.map(sideScore);
	const extra = leaf === 'duel' ? duel(battle) : leaf === 'exchange' ? exchange(battle) : 0;
	return Math.max(0.01, Math.min(0.99, 0.5 + 0.5 * (s1 - s2 + extra) / (s1 + s2 + 0.5)));
}

// -- decoupled UCT ---------------------------------------------------------------------------
function newNode() {
	return {n: 0, stats: [new Map(), new Map()], children: new Map()};
}

function select(node, i, legal, c, rng) {
	// UCB1 on value estimates rescaled to [0, 1] over this node's tried actions, so the
	// exploration constant does not depend on how far apart the evaluations happen to be.
	if (legal.length === 1) return legal[0];
	const stats = node.stats[i];
	let total = 0;
	let lo = Infinity;
	let hi = -Infinity;
	const fresh = [];
	for (const a of legal) {
		const s = stats.get(a);
		if (!s || !s.n) {
			fresh.push(a);
			continue;
		}
		total += s.n;
		const mean = s.w / s.n;
		if (mean < lo) lo = mean;
		if (mean > hi) hi = mean;
	}
	if (fresh.length) return fresh[Math.floor(rng() * fresh.length)];
	const logN = Math.log(total);
	const span = hi - lo > 1e-9 ? hi - lo : 1;
	let best = legal[0];
	let bestScore = -Infinity;
	for (const a of legal) {
		const s = stats.get(a);
		const score = (s.w / s.n - lo) / span + c * Math.sqrt(logN / s.n);
		if (score > bestScore) {
			bestScore = score;
			best = a;
		}
	}
	return best;
}

function record(node, i, action, value) {
	let s = node.stats[i].get(action);
	if (!s) node.stats[i].set(action, s = {n: 0, w: 0});
	s.n++;
	s.w += value;
}

function search(cmd) {
	const t0 = process.hrtime.bigint();
	const {battle, skipped} = buildBattle(cmd.spec);
	const cloner = new Cloner(battle);
	const us = cmd.us === 'p2' ? 1 : 0;
	const rootChoices = choicesFor(battle, us);
	let allowed = (cmd.root || []).filter(ch => rootChoices.includes(ch));
	if (!allowed.length) allowed = cmd.root && cmd.root.length ? cmd.root : rootChoices;
	const rng = makeRng((cmd.seed || 1) * 2654435761);
	const c = cmd.c === undefined ? 0.7 : cmd.c;
	const maxDepth = cmd.depth || 8;
	const rollout = cmd.rollout || 0; // greedy turns played past the tree before evaluating
	const deadline = t0 + BigInt(Math.round((cmd.ms || 100) * 1e6));
	const maxIter = cmd.iterations || Infinity;
	const tree = newNode();
	const timing = {build_ms: Number(process.hrtime.bigint() - t0) / 1e6, clone_ms: 0, step_ms: 0, eval_ms: 0};
	let iterations = 0;
	let steps = 0;
	let errors = 0;
	let rejected = 0;
	let loops = 0;
	while (iterations < maxIter && (loops++ === 0 || process.hrtime.bigint() < deadline)) {
		let t = process.hrtime.bigint();
		const sim = cloner.restore(freshSeed(rng));
		let now = process.hrtime.bigint();
		timing.clone_ms += Number(now - t) / 1e6;
		t = now;
		const path = [];
		let node = tree;
		try {
			for (let depth = 0; depth < maxDepth && !sim.ended; depth++) {
				const legal = [choicesFor(sim, 0), choicesFor(sim, 1)];
				if (depth === 0) legal[us] = allowed;
				const a = [select(node, 0, legal[0], c, rng), select(node, 1, legal[1], c, rng)];
				const ok = step(sim, a[0], a[1]);
				if (!ok[0] || !ok[1]) rejected++;
				if (depth === 0 && !ok[us] && allowed.length > 1) {
					// This guess of the battle cannot play that root choice: drop it.
					allowed = allowed.filter(ch => ch !== a[us]);
					path.length = 0;
					break;
				}
				steps++;
				path.push([node, a]);
				const key = a[0] + '|' + a[1];
				let child = node.children.get(key);
				if (!child) {
					node.children.set(key, child = newNode());
					break;
				}
				node = child;
			}
		} catch (err) {
			errors++;
			if (errors > 50 && errors > iterations) throw err;
			continue;
		}
		if (!path.length) continue;
		try {
			for (let k = 0; k < rollout && !sim.ended; k++) {
				step(sim, greedy(sim, 0, rng), greedy(sim, 1, rng));
				steps++;
			}
		} catch (err) {
			errors++;
			continue;
		}
		now = process.hrtime.bigint();
		timing.step_ms += Number(now - t) / 1e6;
		t = now;
		const value = evaluate(sim, cmd.leaf);
		timing.eval_ms += Number(process.hrtime.bigint() - t) / 1e6;
		for (const [n, a] of path) {
			n.n++;
			record(n, 0, a[0], value);
			record(n, 1, a[1], 1 - value);
		}
		iterations++;
	}
	const table = i => {
		const visits = {};
		const values = {};
		for (const [a, s] of tree.stats[i]) {
			visits[a] = s.n;
			values[a] = s.w / s.n;
		}
		return {visits, values};
	};
	const ours = table(us);
	const theirs = table(1 - us);
	timing.total_ms = Number(process.hrtime.bigint() - t0) / 1e6;
	return {
		visits: ours.visits, values: ours.values, opp_visits: theirs.visits,
		iterations, steps, errors, rejected, skipped, root_value: evaluate(battle), timing,
	};
}

// -- inspection and benchmarks ---------------------------------------------------------------
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

function bench(cmd) {
	const {battle} = buildBattle(cmd.spec);
	const rng = makeRng(cmd.seed || 7);
	for (let k = 0; k < (cmd.advance || 0) && !battle.ended; k++) {
		const l1 = choicesFor(battle, 0);
		const l2 = choicesFor(battle, 1);
		step(battle, l1[Math.floor(rng() * l1.length)], l2[Math.floor(rng() * l2.length)]);
	}
	battle.log = [];
	const cloner = new Cloner(battle);
	const fresh = cmd.fresh; // time State.deserializeBattle instead, for comparison
	const deadline = process.hrtime.bigint() + BigInt(Math.round((cmd.ms || 1000) * 1e6));
	let clones = 0;
	let steps = 0;
	let cloneNs = 0n;
	let stepNs = 0n;
	while (process.hrtime.bigint() < deadline) {
		let t = process.hrtime.bigint();
		let sim;
		if (fresh) {
			sim = State.deserializeBattle(cloner.text);
			sim.prng = new PRNG(freshSeed(rng));
		} else {
			sim = cloner.restore(freshSeed(rng));
		}
		cloneNs += process.hrtime.bigint() - t;
		clones++;
		for (let d = 0; d < (cmd.depth || 4) && !sim.ended; d++) {
			const l1 = choicesFor(sim, 0);
			const l2 = choicesFor(sim, 1);
			t = process.hrtime.bigint();
			step(sim, l1[Math.floor(rng() * l1.length)], l2[Math.floor(rng() * l2.length)]);
			stepNs += process.hrtime.bigint() - t;
			steps++;
		}
	}
	return {
		clones, steps, clone_ms: Number(cloneNs) / 1e6, step_ms: Number(stepNs) / 1e6,
		serialized_bytes: cloner.text.length, turn: battle.turn, restore_exact: cloner.exact(),
	};
}

const COMMANDS = {
	ping: () => ({pid: process.pid}),
	warm: cmd => {
		// Load the format's data now, not during the first decision's time budget.
		const battle = new Battle({formatid: cmd.format});
		battle.dex.loadData();
		return {pid: process.pid};
	},
	build: cmd => {
		const {battle, skipped} = buildBattle(cmd.spec);
		return {state: summary(battle), skipped};
	},
	search,
	bench,
};

const rl = readline.createInterface({input: process.stdin, terminal: false});
rl.on('line', line => {
	if (!line.trim()) return;
	let cmd;
	let answer;
	try {
		cmd = JSON.parse(line);
		const handler = COMMANDS[cmd.cmd];
		if (!handler) throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
		answer = Object.assign({id: cmd.id, ok: true}, handler(cmd));
	} catch (err) {
		answer = {id: cmd && cmd.id, ok: false, error: String(err && err.stack || err)};
	}
	process.stdout.write(JSON.stringify(answer) + '\n');
});
rl.on('close', () => process.exit(0));
