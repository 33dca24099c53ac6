'use strict';
// The simulator host: many Pokémon Showdown battles at once in one Node process, driven
// over stdin/stdout in JSON lines by battles/sim.py. No server, no login, no websocket.
//
//   node battles/sim_host.js <pokemon-showdown package folder>
//
// stdin, one JSON object a line:
//   {"t": "start", "id": ID, "format": F, "seed": S|null, "players": [{"name", "team"}, {...}]}
//       team: a packed team, or null for a random-battle format
//   {"t": "choose", "id": ID, "side": "p1", "choice": "move 1"}
//   {"t": "drop", "id": ID}                  forget a battle (its owner gave up on it)
//   {"t": "bench", "id": ID, "format": F, "n": N, "concurrency": C, "teams": [packed, ...]}
//       the simulator alone: N battles between the package's own random players
// stdout, one JSON object a line:
//   {"ready": true, "version": V}           once, at start
//   {"id": ID, "side": "p1", "data": TEXT}  protocol lines for one side, as a server sends them
//   {"id": ID, "end": RECORD}               the battle is over: what the server's battle-end
//                                           hook writes (battles/showdown_config.js)
//   {"id": ID, "error": MESSAGE}            the battle could not go on (it is forgotten)
//   {"id": ID, "bench": {battles, turns, seconds}}
// The host exits when its stdin closes: it never outlives its owner.

const path = require('path');

const psDir = process.argv[2];
if (!psDir) {
	process.stderr.write('usage: node sim_host.js <pokemon-showdown package folder>\n');
	process.exit(2);
}
const root = path.resolve(psDir);
const {Battle, Dex, Teams, TeamValidator} = require(path.join(root, 'dist', 'sim'));
const {extractChannelMessages} = require(path.join(root, 'dist', 'sim', 'battle'));
const {BattleStream, getPlayerStreams} = require(path.join(root, 'dist', 'sim', 'battle-stream'));
const {RandomPlayerAI} = require(path.join(root, 'dist', 'sim', 'tools', 'random-player-ai'));
const VERSION = require(path.join(root, 'package.json')).version;

const battles = new Map(); // id -> {battle, rqid, log: spectator lines, names}
const formats = new Map(); // format id -> {format, validator} or null when unknown
const validated = new Map(); // format + packed team -> packed team after validation (as the server keeps it)
let out = [];

function emit(obj) {
	out.push(JSON.stringify(obj));
}

function flush() {
	if (out.length) {
		process.stdout.write(out.join('\n') + '\n');
		out = [];
	}
}

function formatFor(id) {
	if (!formats.has(id)) {
		const found = Dex.formats.get(id);
		// An unknown id still returns an object; only a real Format can be played.
		const ok = found.exists && found.effectType === 'Format';
		formats.set(id, ok ? {format: found, validator: found.team ? null : TeamValidator.get(found.id)} : null);
	}
	return formats.get(id);
}

// The server validates every team and keeps the validator's packed result (it normalises
// sets, e.g. gen 1-2 DVs): do the same, so a battle here plays the teams a server would.
function validTeam(entry, formatId, team, name) {
	if (!team) {
		if (!entry.format.team) throw new Error(`format '${formatId}' needs a team for ${name}`);
		return undefined;
	}
	if (!entry.validator) return team;
	const key = formatId + '\n' + team;
	if (!validated.has(key)) {
		const sets = Teams.unpack(team);
		if (!sets) throw new Error(`team of ${name} is not a packed team: ${team.slice(0, 80)}`);
		const problems = entry.validator.validateTeam(sets);
		if (problems && problems.length) {
			throw new Error(`team of ${name} is not legal in ${formatId}: ${problems.join('; ')}`);
		}
		validated.set(key, Teams.pack(sets));
	}
	return validated.get(key);
}

function start(msg) {
	const {id, format: formatId, seed, players} = msg;
	if (battles.has(id)) throw new Error(`battle ${id} already exists`);
	const entry = formatFor(formatId);
	if (!entry) throw new Error(`unknown format '${formatId}': the simulator of pokemon-showdown ${VERSION} does not know it`);
	const state = {battle: null, rqid: 0, log: [], names: players.map(p => p.name)};
	const teams = players.map(p => validTeam(entry, formatId, p.team, p.name));
	battles.set(id, state);
	const options = {formatid: entry.format.id, send: (type, data) => receive(id, state, type, data)};
	if (seed) options.seed = seed;
	state.battle = new Battle(options);
	players.forEach((p, i) => {
		const slot = `p${i + 1}`;
		const opts = {name: p.name};
		if (teams[i] !== undefined) opts.team = teams[i];
		state.battle.setPlayer(slot, opts);
	});
	state.battle.sendUpdates();
}

function receive(id, state, type, data) {
	if (Array.isArray(data)) data = data.join('\n');
	if (type === 'update') {
		const channels = extractChannelMessages(data, [0, 1, 2]);
		for (const line of channels[0]) state.log.push(line);
		emit({id, side: 'p1', data: channels[1].join('\n')});
		emit({id, side: 'p2', data: channels[2].join('\n')});
	} else if (type === 'sideupdate') {
		const nl = data.indexOf('\n');
		const side = data.slice(0, nl);
		let text = data.slice(nl + 1);
		if (text.startsWith('|request|{') && text[10] !== '}') {
			// The server numbers every request of a battle (room-battle.ts): so do we, by
			// splicing the key in (the simulator's own JSON; no parse and re-stringify).
			text = `|request|{"rqid":${++state.rqid},${text.slice(10)}`;
		}
		emit({id, side, data: text});
	} else if (type === 'end') {
		const end = JSON.parse(data);
		battles.delete(id);
		emit({id, end: {
			roomid: `battle-${id}`,
			format: state.battle.format.id,
			players: state.names,
			winner: end.winner || '',
			turns: end.turns,
			endType: 'normal',
			seed: end.seed || null,
			p1team: end.p1team || null,
			p2team: end.p2team || null,
			inputLog: end.inputLog || [],
			log: state.log.join('\n'),
			uploadtime: Math.floor(Date.now() / 1000),
		}});
	}
}

function choose(msg) {
	const state = battles.get(msg.id);
	if (!state) return; // dropped, or over: a late choice is harmless
	state.battle.choose(msg.side, msg.choice); // an invalid choice answers with |error| itself
	state.battle.sendUpdates();
}

// The ceiling: the same simulator, the package's own random players, no Python at all.
async function bench(msg) {
	const {id, format, n, concurrency, teams} = msg;
	const entry = formatFor(format);
	if (!entry) throw new Error(`unknown format '${format}'`);
	const t0 = process.hrtime.bigint();
	let next = 0;
	let turns = 0;
	async function one(k) {
		const streams = getPlayerStreams(new BattleStream());
		const players = [new RandomPlayerAI(streams.p1), new RandomPlayerAI(streams.p2)];
		for (const p of players) void p.start();
		const team = j => (teams && teams.length ? validTeam(entry, format, teams[(2 * k + j) % teams.length], `p${j + 1}`) : undefined);
		const spec = {formatid: entry.format.id};
		void streams.omniscient.write(`>start ${JSON.stringify(spec)}\n` +
			`>player p1 ${JSON.stringify({name: 'Bench 1', team: team(0)})}\n` +
			`>player p2 ${JSON.stringify({name: 'Bench 2', team: team(1)})}`);
		let turn = 0;
		for await (const chunk of streams.omniscient) {
			for (const m of chunk.matchAll(/^\|turn\|(\d+)$/gm)) turn = Number(m[1]);
		}
		turns += turn;
	}
	async function lane() {
		while (next < n) await one(next++);
	}
	await Promise.all(Array.from({length: Math.max(1, concurrency)}, lane));
	emit({id, bench: {battles: n, turns, seconds: Number(process.hrtime.bigint() - t0) / 1e9}});
	flush();
}

function handle(line) {
	if (!line.trim()) return;
	let msg;
	try {
		msg = JSON.parse(line);
	} catch (err) {
		process.stderr.write(`sim_host: not JSON: ${line.slice(0, 200)}\n`);
		return;
	}
	try {
		if (msg.t === 'start') start(msg);
		else if (msg.t === 'choose') choose(msg);
		else if (msg.t === 'drop') battles.delete(msg.id);
		else if (msg.t === 'bench') bench(msg).catch(err => { emit({id: msg.id, error: String(err.message || err)}); flush(); });
		else throw new Error(`unknown command ${JSON.stringify(msg.t)}`);
	} catch (err) {
		// One broken battle must not take the others down.
		battles.delete(msg.id);
		emit({id: msg.id, error: err && err.message ? err.message : String(err)});
	}
}

let buffer = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', chunk => {
	buffer += chunk;
	let nl;
	while ((nl = buffer.indexOf('\n')) >= 0) {
		const line = buffer.slice(0, nl);
		buffer = buffer.slice(nl + 1);
		handle(line);
		flush(); // each battle's news at once: Python answers it while the others simulate
	}
});
process.stdin.on('end', () => process.exit(0));
process.stdout.on('error', () => process.exit(0)); // the owner is gone
emit({ready: true, version: VERSION});
flush();
