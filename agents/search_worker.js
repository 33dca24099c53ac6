'use strict';
// The search bot's simulator worker: Pokémon Showdown's own Battle as the transition model.
//
//   node agents/search_worker.js <pokemon-showdown package folder>
//
// One JSON object per line on stdin, one answer per line on stdout ({id, ok, ...} or
// {id, ok: false, error}). Commands:
//   ping                         -> {pid}
//   build  {spec}                -> {state, features, duel, value}: the battle built from a spec,
//                                   summarised, and its evaluation
//   warm   {format}              -> loads the format's data
//   search {spec, us, root, ms, iterations, c, bias, prior, depth, rollout, seed}
//                                -> {visits, values, opp_visits, iterations, timing}
//   bench  {spec, ms, depth, advance, fresh} -> clone and step timings
// (agents/search_sim.js builds, clones and steps the battles.)
// A spec is one full guess of a battle (both teams, HP, statuses, boosts, volatiles, PP,
// field) built by agents/search_spec.py. The battle is built once per spec and cloned through
// the simulator's own state serialisation (State.serializeBattle/deserializeBattle) for
// every simulation. The search is decoupled UCT over both sides' simultaneous choices,
// open loop (each simulation draws fresh random numbers), leaves scored by evaluate().

const fs = require('fs');
const path = require('path');
const readline = require('readline');

const psDir = process.argv[2];
if (!psDir) {
	process.stderr.write('usage: node search_worker.js <pokemon-showdown package folder>\n');
	process.exit(2);
}
const {Battle, PRNG, State, STATS, makeRng, freshSeed, buildBattle, Cloner, choicesFor, step, summary} =
	require('./search_sim')(psDir);

// -- evaluation -----------------------------------------------------------------------------
// A leaf's value is a logistic model of who wins (agents/search_value.py), fitted on recorded
// battles by scripts/fit_search_value.py: over each side's Pokémon left, their HP, their
// statuses (sleep from a foe and from Rest apart), the active one's boosts and Substitute,
// plus the duel the two active Pokémon would fight. The weights are read per format from
// agents/search_value.json (a format without a fit of its own uses the file's default).
const VALUE_FILE = path.join(__dirname, 'search_value.json');
const VALUE_TABLE = JSON.parse(fs.readFileSync(VALUE_FILE, 'utf8'));
const FEATURES = ['alive', 'hp', 'slp', 'rest', 'par', 'frz', 'psn', 'boosts', 'sub'];
const weightsByFormat = new Map();

function valueWeights(battle) {
	const id = battle.format.id;
	let w = weightsByFormat.get(id);
	if (!w) {
		const entry = VALUE_TABLE.formats[id] || VALUE_TABLE.formats[VALUE_TABLE.default];
		if (!entry) throw new Error(`${VALUE_FILE} has no weights for ${id} and no default: run scripts/fit_search_value.py`);
		weightsByFormat.set(id, w = entry.weights);
	}
	return w;
}

function restSleep(mon) {
	// Asleep from its own Rest (the sleep's source is itself), not from a foe's move.
	return mon.status === 'slp' && !!mon.statusState.source?.isAlly(mon);
}

function clauseSleeper(side) {
	// A living Pokémon on this side asleep from a foe's move: while it sleeps, Sleep Clause Mod
	// blocks the foe's sleep moves.
	return side.pokemon.some(mon => mon.hp > 0 && mon.status === 'slp' && !restSleep(mon));
}

function sideFeatures(side) {
	// agents/search_value.py's side_features, from the simulated battle.
	const f = {alive: 0, hp: 0, slp: 0, rest: 0, par: 0, frz: 0, psn: 0, boosts: 0, sub: 0};
	for (const mon of side.pokemon) {
		if (mon.fainted || mon.hp <= 0) continue;
		f.alive++;
		f.hp += mon.hp / mon.maxhp;
		switch (mon.status) {
		case 'slp': if (restSleep(mon)) f.rest++; else f.slp++; break;
		case 'par': f.par++; break;
		case 'frz': f.frz++; break;
		case 'psn': case 'tox': case 'brn': f.psn++; break;
		}
	}
	const active = side.active[0];
	if (active && !active.fainted) {
		for (const stat of STATS) f.boosts += Math.max(-3, Math.min(3, active.boosts[stat]));
		if (active.volatiles.substitute) f.sub = 1;
	}
	return f;
}

function activeMove(battle, id) {
	const cache = battle.dex.searchMoveCache || (battle.dex.searchMoveCache = new Map());
	if (!cache.has(id)) cache.set(id, battle.dex.getActiveMove(id));
	return cache.get(id);
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

function switchTrade(battle, side, choice, foe) {
	// The damage trade of the Pokémon a switch choice brings in against the foe.
	const mon = side.pokemon[Number(choice.split(' ')[1]) - 1];
	return damageRate(battle, mon, foe) - damageRate(battle, foe, mon);
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
			score = switchTrade(battle, side, choice, foe);
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

const HEALS = new Set(['recover', 'softboiled', 'rest', 'milkdrink', 'slackoff', 'roost', 'moonlight',
	'morningsun', 'synthesis', 'wish', 'shoreup', 'strengthsap']);

function wasted(battle, i, choice) {
	// A move that cannot do anything now: a status move on a Pokémon that already has a
	// status, a sleep move the Sleep Clause blocks, or healing at full HP. The simulator would
	// play it out as a failure; pruning it keeps the search's few iterations on choices that
	// can differ.
	if (!choice.startsWith('move ')) return false;
	const side = battle.sides[i];
	const me = side.active[0];
	const foe = side.foe.active[0];
	const move = activeMove(battle, choice.split(' ')[1]);
	if (HEALS.has(move.id)) return me.hp >= me.maxhp;
	if (!move.status || move.category !== 'Status' || !foe || foe.fainted) return false;
	// Sleep Clause Mod: no second foe put to sleep while the first sleeps.
	return !!foe.status || (move.status === 'slp' && battle.ruleTable.has('sleepclausemod') && clauseSleeper(side.foe));
}

function prune(battle, i, legal) {
	const kept = legal.filter(choice => !wasted(battle, i, choice));
	return kept.length ? kept : legal;
}

function choiceScore(battle, i, choice) {
	// A quick guess of a choice's worth (the search's prior): a move's expected damage share
	// (a KO counts double), a status move's worth on a healthy foe, healing by the HP missing;
	// a voluntary switch is a small constant.
	const side = battle.sides[i];
	const me = side.active[0];
	const foe = side.foe.active[0];
	if (!foe || foe.fainted || !me || me.fainted) return 0;
	if (choice.startsWith('switch')) {
		if (!side.activeRequest || !side.activeRequest.forceSwitch) return 0.05;
		return 0.5 + switchTrade(battle, side, choice, foe);
	}
	const id = choice.split(' ')[1];
	const move = activeMove(battle, id);
	if (HEALS.has(move.id)) return 0.8 * (1 - me.hp / me.maxhp);
	if (move.category === 'Status') return move.status && !foe.status ? 0.3 : 0.1;
	const rate = moveRate(battle, me, foe, id);
	return rate >= foe.hp / foe.maxhp ? 2 * rate : rate;
}

function priorFor(battle, i, legal) {
	// Softmax of choiceScore over the legal choices.
	const scores = legal.map(ch => {
		try {
			return choiceScore(battle, i, ch);
		} catch (err) {
			return 0;
		}
	});
	const top = Math.max(...scores);
	const weights = scores.map(x => Math.exp((x - top) / PRIOR_TEMPERATURE));
	const total = weights.reduce((a, b) => a + b, 0);
	return new Map(legal.map((ch, k) => [ch, weights[k] / total]));
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

function evaluate(battle) {
	// The position's value for p1, in [0, 1]: the model's win probability, the duel weighted as
	// HP is (it is measured in HP fractions).
	if (battle.ended) return battle.winner === 'p1' ? 1 : battle.winner === 'p2' ? 0 : 0.5;
	const w = valueWeights(battle);
	const [a, b] = battle.sides.map(sideFeatures);
	const both = Math.max(1, a.alive + b.alive);
	let z = (w.alive_tot * (a.alive - b.alive) + w.hp_tot * (a.hp - b.hp)) / both;
	for (const k of FEATURES) z += w[k] * (a[k] - b[k]);
	z += (w.hp + w.hp_tot / both) * duel(battle);
	return Math.max(0.01, Math.min(0.99, 1 / (1 + Math.exp(-z))));
}

// -- decoupled UCT ---------------------------------------------------------------------------
function newNode() {
	return {n: 0, stats: [new Map(), new Map()], prior: [null, null], moments: [{n: 0, w: 0, ww: 0}, {n: 0, w: 0, ww: 0}], children: new Map()};
}

const PRIOR_TEMPERATURE = 0.2;

function select(node, i, legal, c, bias, rng, sim) {
	// UCB1 with the rewards measured in units of their spread at this node (the standard
	// deviation of every value recorded here for this side): the evaluation's differences
	// between choices are small and noisy, so a fixed scale would explore almost uniformly
	// and a min-max rescaling would lock in on the first lucky choice. A prior over the
	// choices (priorFor, or the root's given one) orders the first tries and adds a
	// progressive bias, bias * P(a) * sqrt(N) / (1 + n(a)), that fades as visits come in.
	if (legal.length === 1) return legal[0];
	const stats = node.stats[i];
	let prior = node.prior[i];
	if (!prior) prior = node.prior[i] = priorFor(sim, i, legal);
	let total = 0;
	let fresh = null;
	let freshP = -1;
	for (const a of legal) {
		const s = stats.get(a);
		if (!s || !s.n) {
			const p = (prior.get(a) || 0) + 1e-6 * rng();
			if (p > freshP) {
				freshP = p;
				fresh = a;
			}
		} else {
			total += s.n;
		}
	}
	if (fresh !== null) return fresh;
	const all = node.moments[i];
	const mean = all.w / all.n;
	const sd = Math.sqrt(Math.max(all.ww / all.n - mean * mean, 0)) || 1e-3;
	const logN = Math.log(total);
	const sqrtN = Math.sqrt(total);
	let best = legal[0];
	let bestScore = -Infinity;
	for (const a of legal) {
		const s = stats.get(a);
		const score = s.w / s.n / sd + c * Math.sqrt(logN / s.n) + bias * (prior.get(a) || 0) * sqrtN / (1 + s.n);
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
	const m = node.moments[i];
	m.n++;
	m.w += value;
	m.ww += value * value;
}

function search(cmd) {
	const t0 = process.hrtime.bigint();
	const {battle, skipped} = buildBattle(cmd.spec);
	const cloner = new Cloner(battle);
	const us = cmd.us === 'p2' ? 1 : 0;
	const rootChoices = choicesFor(battle, us);
	let allowed = (cmd.root || []).filter(ch => rootChoices.includes(ch));
	if (!allowed.length) allowed = cmd.root && cmd.root.length ? cmd.root : rootChoices;
	allowed = prune(battle, us, allowed);
	const rng = makeRng((cmd.seed || 1) * 2654435761);
	const c = cmd.c === undefined ? 1.5 : cmd.c;
	const maxDepth = cmd.depth || 8;
	const rollout = cmd.rollout || 0; // greedy turns played past the tree before evaluating
	const deadline = t0 + BigInt(Math.round((cmd.ms || 100) * 1e6));
	const maxIter = cmd.iterations || Infinity;
	const bias = cmd.bias === undefined ? 2 : cmd.bias;
	const tree = newNode();
	if (cmd.prior && Object.keys(cmd.prior).length) {
		// Our root prior from the caller (the player's own heuristic), over the allowed choices.
		const given = allowed.map(ch => Math.max(cmd.prior[ch] || 0, 0.02));
		const sum = given.reduce((x, y) => x + y, 0);
		tree.prior[us] = new Map(allowed.map((ch, k) => [ch, given[k] / sum]));
	}
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
				const legal = [prune(sim, 0, choicesFor(sim, 0)), prune(sim, 1, choicesFor(sim, 1))];
				if (depth === 0) legal[us] = allowed;
				const a = [select(node, 0, legal[0], c, bias, rng, sim), select(node, 1, legal[1], c, bias, rng, sim)];
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
		const value = evaluate(sim);
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
	while (clones === 0 || process.hrtime.bigint() < deadline) { // at least one, however late it starts
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
		return {state: summary(battle), skipped, features: battle.sides.map(sideFeatures), duel: duel(battle),
			value: evaluate(battle)};
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
