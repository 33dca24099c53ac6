'use strict';
// Qabra's config for the local Pokémon Showdown server. setup_env.sh copies it to
// <package>/config/config.js; the server merges it over config-example.js.
// Per-server settings come from the environment set by battles/server.py.

// Loopback only: the server is never reachable from another machine.
exports.bindaddress = '127.0.0.1';
exports.nothrottle = true;
exports.noguestsecurity = true;
exports.noipchecks = true;
exports.repl = false;
exports.logsdir = process.env.QABRA_PS_LOGS || 'logs/';
// Quiet, local: no ladder, no login server, no crash reports leaving the machine.
exports.crashguardemail = null;
exports.reportjoins = false;
exports.reportbattles = false;
exports.reportbattlejoins = false;

const fs = require('fs');
const path = require('path');

// Every finished battle is written to QABRA_BATTLE_DIR/<roomid>.json: the spectator
// log (channel 0, the form of a public replay) plus the simulator's input log, which
// holds both players' exact choices. Written to a temporary name, then renamed.
exports.handlers = {
	onBattleEnd(battle, winner, players) {
		const dir = process.env.QABRA_BATTLE_DIR;
		if (!dir) return;
		try {
			const room = battle.room;
			const data = battle.logData || {};
			const record = {
				roomid: room.roomid,
				format: battle.format,
				players: [battle.p1 && battle.p1.name, battle.p2 && battle.p2.name],
				winner: winner || '',
				turns: data.turns !== undefined ? data.turns : battle.turn,
				endType: battle.endType || data.endType || 'normal',
				seed: data.seed || null,
				p1team: data.p1team || null,
				p2team: data.p2team || null,
				inputLog: data.inputLog || battle.inputLog || [],
				log: room.getLog(0),
				uploadtime: Math.floor(Date.now() / 1000),
			};
			const file = path.join(dir, `${room.roomid}.json`);
			fs.mkdirSync(dir, {recursive: true});
			fs.writeFileSync(file + '.tmp', JSON.stringify(record));
			fs.renameSync(file + '.tmp', file);
		} catch (err) {
			console.error(`qabra: could not record ${battle.roomid}: ${err && err.stack}`);
		}
	},
};
