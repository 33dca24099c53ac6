'use strict';
// Validate many Showdown teams in one Node process (starting node per team costs ~1s).
//
//   node battles/validate_teams.js <pokemon-showdown package folder> < items.json
//
// stdin:  JSON [{format, text}, ...]   (text: Showdown export, packed or JSON team)
// stdout: JSON [{ok, errors, packed}, ...], one per item, same order.
// `packed` is the team after validation, in Showdown's packed format: what the server
// itself would keep (the validator normalises sets, e.g. gen 1-2 SpD EVs follow SpA).

const path = require('path');

const psDir = process.argv[2];
if (!psDir) {
	process.stderr.write('usage: node validate_teams.js <pokemon-showdown package folder> < items.json\n');
	process.exit(2);
}
const {Dex, Teams, TeamValidator} = require(path.join(path.resolve(psDir), 'dist', 'sim'));

const validators = new Map();

function validatorFor(format) {
	if (!validators.has(format)) {
		const found = Dex.formats.get(format);
		// An unknown id still returns an object; only a real Format can validate.
		validators.set(format, found.exists && found.effectType === 'Format' ? TeamValidator.get(found.id) : null);
	}
	return validators.get(format);
}

function validateOne(item) {
	if (!item || typeof item.format !== 'string' || typeof item.text !== 'string') {
		return {ok: false, errors: ['item must be an object with string fields "format" and "text"'], packed: ''};
	}
	const validator = validatorFor(item.format);
	if (!validator) {
		return {ok: false, errors: [`unknown format '${item.format}'`], packed: ''};
	}
	const team = Teams.import(item.text);
	if (!team || !team.length) {
		return {ok: false, errors: ['no Pokémon could be read from the team text'], packed: ''};
	}
	const problems = validator.validateTeam(team);
	if (problems && problems.length) return {ok: false, errors: problems, packed: ''};
	return {ok: true, errors: [], packed: Teams.pack(team)};
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', chunk => { input += chunk; });
process.stdin.on('end', () => {
	let items;
	try {
		items = JSON.parse(input);
	} catch (err) {
		process.stderr.write(`validate_teams.js: stdin is not JSON: ${err.message}\n`);
		process.exit(2);
	}
	if (!Array.isArray(items)) {
		process.stderr.write('validate_teams.js: stdin must be a JSON array of {format, text}\n');
		process.exit(2);
	}
	const results = items.map(item => {
		try {
			return validateOne(item);
		} catch (err) {
			// One broken team must not lose the results of the others.
			return {ok: false, errors: [`validator crashed: ${err && err.message}`], packed: ''};
		}
	});
	process.stdout.write(JSON.stringify(results));
});
