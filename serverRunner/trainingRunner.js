#!/usr/bin/env node
// Start the Lightning AI studios of studios.json in batches, fire-and-forget.
//
// Every studio is started by running the Python helper (serverRunner/sendReq.py), which asks the
// studio to run its commandToRun detached and returns at once. Batches start `--batch-delay`
// seconds apart (default 4 hours, a free session's length); the studios of a batch start
// `--stagger` seconds apart; the plan repeats for `--rounds` rounds (0 = until stopped).
// Credentials reach the helper through its environment, never its command line, and never appear
// in this program's output. Node 18+, built-ins only. Exit codes: 0 done, 2 bad input, 1 otherwise.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');

const REQUIRED = ['user', 'apiKey', 'userID', 'teamspaceName', 'studioName', 'commandToRun'];
const SECRET_FIELDS = ['apiKey', 'userID'];
const TARGETS = ['studio', 'job'];

class BadInput extends Error {}

const OPTIONS = {
  studios: { env: 'STUDIOS_FILE', def: path.join(__dirname, '..', 'studios.json'), help: 'studios file' },
  'batch-size': { env: 'BATCH_SIZE', def: '0', num: true, int: true, help: 'studios per batch (0 = all in one batch)' },
  'batch-delay': { env: 'BATCH_DELAY', def: String(4 * 3600), num: true, help: 'seconds between batches' },
  stagger: { env: 'STAGGER', def: '5', num: true, help: 'seconds between the studios of a batch' },
  rounds: { env: 'ROUNDS', def: '0', num: true, int: true, help: 'rounds of the whole plan (0 = until stopped)' },
  'kill-after': { env: 'KILL_AFTER', def: '300', num: true, help: 'seconds before a helper that has not returned is killed' },
  python: { env: 'PYTHON', def: 'python3', help: 'Python interpreter for the helper' },
  helper: { env: 'SEND_REQ', def: path.join(__dirname, 'sendReq.py'), help: 'helper script' },
};

function usage() {
  const lines = [
    'Usage: node serverRunner/trainingRunner.js [options]',
    '',
    'Start the studios of studios.json in batches, fire-and-forget, through serverRunner/sendReq.py.',
    'An entry: user, apiKey, userID, teamspaceName, studioName, commandToRun; optional machine, config (conf.json',
    'keys), grid ({"seed": [0, 1]}: a run per combination, with studioNames: one studio each), target "job" (a',
    'Lightning Job in the studio\'s environment; interruptible, max_runtime). Details: docs/launcher.md.',
    '',
    'Options (each also settable by the environment variable in brackets):',
  ];
  for (const [name, o] of Object.entries(OPTIONS)) {
    lines.push(`  --${name} VALUE`.padEnd(26) + `${o.help} [${o.env}] (default ${o.def})`);
  }
  lines.push('  --dry-run'.padEnd(26) + 'print the plan with its times and start nothing');
  lines.push('  --help'.padEnd(26) + 'show this help');
  return lines.join('\n');
}

// Node fires a timer of more than 2^31 - 1 ms at once (TimeoutOverflowWarning): longer waits are chained.
const MAX_TIMER_MS = 2 ** 31 - 1;

function longTimeout(fn, ms) {
  const handle = { timer: null };
  const step = (left) => {
    handle.timer = setTimeout(left > MAX_TIMER_MS ? () => step(left - MAX_TIMER_MS) : fn, Math.min(left, MAX_TIMER_MS));
  };
  step(ms);
  return handle;
}

function clearLong(handle) { clearTimeout(handle.timer); }

function parseArgs(argv, env) {
  const opts = { dryRun: false, help: false };
  for (const [name, o] of Object.entries(OPTIONS)) opts[name] = env[o.env] !== undefined && env[o.env] !== '' ? env[o.env] : o.def;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--dry-run') { opts.dryRun = true; continue; }
    if (arg === '--help' || arg === '-h') { opts.help = true; continue; }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (!m || !(m[1] in OPTIONS)) throw new BadInput(`unknown argument ${arg} (see --help)`);
    const value = m[2] !== undefined ? m[2] : argv[++i];
    if (value === undefined) throw new BadInput(`--${m[1]} needs a value`);
    opts[m[1]] = value;
  }
  for (const [name, o] of Object.entries(OPTIONS)) {
    if (!o.num) continue;
    const n = Number(opts[name]);
    if (String(opts[name]).trim() === '' || !Number.isFinite(n) || n < 0) {  // Number('') is 0: refuse, not 0
      throw new BadInput(`--${name} must be a number >= 0, got ${JSON.stringify(opts[name])}`);
    }
    if (o.int && !Number.isInteger(n)) {
      throw new BadInput(`--${name} (or ${o.env}) must be a whole number, got ${JSON.stringify(opts[name])}`);
    }
    opts[name] = n;
  }
  return opts;
}

// The first key that appears twice in the top-level object of a JSON text (JSON.parse keeps the last
// silently), or null.
function repeatedKey(text) {
  const seen = new Set();
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
    else if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const key = JSON.parse(text.slice(i, j + 1));
      let k = j + 1;
      while (k < text.length && /\s/.test(text[k])) k++;
      if (depth === 1 && text[k] === ':') {
        if (seen.has(key)) return key;
        seen.add(key);
      }
      i = j;
    }
  }
  return null;
}

function loadStudios(file) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new BadInput(`${file} cannot be read (${e.code}); copy studios.json.example to studios.json and fill it in`);
  }
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new BadInput(`${file} is not valid JSON: ${e.message}`);
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new BadInput(`${file} must be an object of entries like "studio_1": {...}`);
  }
  const twice = repeatedKey(text);
  if (twice) throw new BadInput(`${file}: entry "${twice}" appears twice (JSON keeps only the last); rename one`);
  const studios = [];
  const seen = new Map();
  for (const [name, entry] of Object.entries(data)) {
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
      throw new BadInput(`${file}: entry "${name}" must be an object`);
    }
    for (const field of REQUIRED) {
      if (typeof entry[field] !== 'string' || entry[field].trim() === '') {
        throw new BadInput(`${file}: entry "${name}" lacks field "${field}" (a non-empty string)`);
      }
    }
    for (const field of REQUIRED) {
      const value = entry[field].trim();
      if (/^your-/i.test(value) || /^<.*>$/.test(value)) {
        throw new BadInput(`${file}: entry "${name}" field "${field}" is still the placeholder "${value}"; fill in your own value`);
      }
    }
    if (entry.config !== undefined && (entry.config === null || typeof entry.config !== 'object' || Array.isArray(entry.config))) {
      throw new BadInput(`${file}: entry "${name}" field "config" must be an object of conf.json keys`);
    }
    if (entry.machine !== undefined && (typeof entry.machine !== 'string' || entry.machine.trim() === '')) {
      throw new BadInput(`${file}: entry "${name}" field "machine" must be a non-empty string when given`);
    }
    checkJob(file, name, entry);
    for (const expanded of expandGrid(file, name, entry)) {
      // a studio runs one run at a time; jobs of one studio run side by side, each on its own machine
      const key = expanded.target === 'job' ? null : `${expanded.user}/${expanded.teamspaceName}/${expanded.studioName}`;
      if (key && seen.has(key)) {
        throw new BadInput(`${file}: entry "${expanded.name}" field "studioName" repeats the studio of entry "${seen.get(key)}"`);
      }
      if (key) seen.set(key, expanded.name);
      studios.push(expanded);
    }
  }
  if (studios.length === 0) throw new BadInput(`${file} has no studio entries`);
  return studios;
}

// "target": "job" entries: a Lightning Job in the studio's environment instead of a command in the studio.
function checkJob(file, name, entry) {
  const where = `${file}: entry "${name}"`;
  if (entry.target !== undefined && !TARGETS.includes(entry.target)) {
    throw new BadInput(`${where} field "target" must be "studio" or "job", got ${JSON.stringify(entry.target)}`);
  }
  for (const field of ['interruptible', 'max_runtime']) {
    if (entry[field] !== undefined && entry.target !== 'job') {
      throw new BadInput(`${where} field "${field}" applies to "target": "job" entries only`);
    }
  }
  if (entry.interruptible !== undefined && typeof entry.interruptible !== 'boolean') {
    throw new BadInput(`${where} field "interruptible" must be true or false`);
  }
  if (entry.max_runtime !== undefined && !(Number.isInteger(entry.max_runtime) && entry.max_runtime >= 60)) {
    throw new BadInput(`${where} field "max_runtime" must be whole seconds >= 60, got ${JSON.stringify(entry.max_runtime)}`);
  }
}

// An entry's "grid" ({"seed": [0, 1, 2], "learning_rate": [1e-4, 5e-5]}) becomes one entry per combination,
// its config the entry's with the combination over it and a run name of its own (so the runs' Hub folders
// differ). A studio runs one run at a time, so a studio grid names one studio per combination
// ("studioNames"); a job grid runs every combination from the entry's studio.
const MAX_GRID = 100;

function expandGrid(file, name, entry) {
  const where = `${file}: entry "${name}"`;
  const { grid, studioNames, ...rest } = entry;
  if (grid === undefined) {
    if (studioNames !== undefined) throw new BadInput(`${where} field "studioNames" needs a "grid" to go with`);
    return [{ name, ...rest }];
  }
  if (grid === null || typeof grid !== 'object' || Array.isArray(grid) || Object.keys(grid).length === 0) {
    throw new BadInput(`${where} field "grid" must be an object of conf.json keys, each with a list of values`);
  }
  let combos = [{}];
  for (const [key, values] of Object.entries(grid)) {
    if (!Array.isArray(values) || values.length === 0) {
      throw new BadInput(`${where} field "grid" key "${key}" must be a non-empty list of values`);
    }
    if (key === 'name') throw new BadInput(`${where} field "grid" cannot vary "name": each run's name is made from its values`);
    if (entry.config && key in entry.config) {
      throw new BadInput(`${where} key "${key}" is in both "config" and "grid"; keep it in one`);
    }
    combos = combos.flatMap((c) => values.map((v) => ({ ...c, [key]: v })));
    if (combos.length > MAX_GRID) throw new BadInput(`${where} field "grid" makes more than ${MAX_GRID} runs`);
  }
  if (entry.target !== 'job') {
    if (!Array.isArray(studioNames) || studioNames.length !== combos.length ||
        !studioNames.every((s) => typeof s === 'string' && s.trim() !== '')) {
      throw new BadInput(`${where}: a studio grid of ${combos.length} runs needs "studioNames", a list of ${combos.length} ` +
        'studio names (a studio runs one run at a time), or "target": "job"');
    }
  } else if (studioNames !== undefined) {
    throw new BadInput(`${where} field "studioNames" is for studio grids; a job grid runs in the entry's studio`);
  }
  const base = (entry.config && entry.config.name) || 'carracing';
  return combos.map((combo, i) => {
    const suffix = Object.entries(combo).map(([k, v]) => `${k}${String(v).replace(/[^\w.-]+/g, '_')}`).join('-');
    return { ...rest, name: `${name}/${suffix}`, studioName: studioNames ? studioNames[i] : rest.studioName,
      config: { ...(entry.config || {}), ...combo, name: `${base}-${suffix}`.slice(0, 100) } };
  });
}

// [{round, batch, at (seconds from start), studios: [{studio, at}]}]
function plan(studios, opts, rounds) {
  const size = opts['batch-size'] > 0 ? Math.floor(opts['batch-size']) : studios.length;
  const batches = [];
  for (let i = 0; i < studios.length; i += size) batches.push(studios.slice(i, i + size));
  const out = [];
  for (let r = 0; r < rounds; r++) {
    batches.forEach((batch, b) => {
      const at = (r * batches.length + b) * opts['batch-delay'];
      out.push({ round: r + 1, batch: b + 1, at, studios: batch.map((s, k) => ({ studio: s, at: at + k * opts.stagger })) });
    });
  }
  return out;
}

function stamp() { return new Date().toISOString(); }

function mask(text, secrets) {
  let out = text;
  for (const s of secrets) if (s) out = out.split(s).join('***');
  return out;
}

class Runner {
  constructor(opts, studios, out = process.stdout) {
    this.opts = opts;
    this.studios = studios;
    this.out = out;
    this.children = new Set();
    this.timers = new Set();
    this.stopped = false;
    this.failures = 0;
    this.secrets = studios.flatMap((s) => SECRET_FIELDS.map((f) => s[f]));
  }

  log(msg) { this.out.write(mask(`${stamp()} ${msg}\n`, this.secrets)); }

  later(seconds, fn) {
    return new Promise((resolve) => {
      const t = longTimeout(() => { this.timers.delete(t); resolve(this.stopped ? undefined : fn()); }, seconds * 1000);
      this.timers.add(t);
      this.wake = () => { clearLong(t); this.timers.delete(t); resolve(); };
    });
  }

  start(studio) {
    return new Promise((resolve) => {
      const env = {
        ...process.env,
        STUDIO_ENTRY: studio.name,
        STUDIO_USER: studio.user,
        STUDIO_API_KEY: studio.apiKey,
        STUDIO_USER_ID: studio.userID,
        STUDIO_TEAMSPACE: studio.teamspaceName,
        STUDIO_NAME: studio.studioName,
        STUDIO_COMMAND: studio.commandToRun,
        STUDIO_MACHINE: studio.machine || '',
        STUDIO_CONFIG: studio.config ? JSON.stringify(studio.config) : '',
        STUDIO_TARGET: studio.target || '',
        STUDIO_INTERRUPTIBLE: studio.interruptible === undefined ? '' : JSON.stringify(studio.interruptible),
        STUDIO_MAX_RUNTIME: studio.max_runtime === undefined ? '' : JSON.stringify(studio.max_runtime),
      };
      const child = spawn(this.opts.python, [this.opts.helper, '--from-env'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      this.children.add(child);
      let killed = false;
      const prefix = (chunk) => chunk.toString().split(/\r?\n/).filter((l) => l.length).forEach((l) => this.log(`[${studio.name}] ${l}`));
      child.stdout.on('data', prefix);
      child.stderr.on('data', prefix);
      const term = longTimeout(() => {
        killed = true;
        this.log(`[${studio.name}] helper still running after ${this.opts['kill-after']} s: SIGTERM`);
        child.kill('SIGTERM');
        const hard = setTimeout(() => child.kill('SIGKILL'), 5000);
        hard.unref();
      }, this.opts['kill-after'] * 1000);
      child.on('error', (e) => {
        clearLong(term);
        this.children.delete(child);
        this.failures++;
        this.log(`start studio=${studio.name} outcome=failed reason="cannot run ${this.opts.python}: ${e.code}; ` +
          'give an interpreter that has lightning-sdk with --python PATH or PYTHON=PATH"');
        resolve();
      });
      child.on('close', (code, signal) => {
        clearLong(term);
        this.children.delete(child);
        const outcome = killed ? 'killed' : code === 0 ? 'started' : 'failed';
        if (outcome !== 'started') this.failures++;
        this.log(`start studio=${studio.name} outcome=${outcome} exit=${code === null ? signal : code}`);
        resolve();
      });
    });
  }

  async run() {
    const rounds = this.opts.rounds > 0 ? Math.floor(this.opts.rounds) : Infinity;
    const t0 = Date.now();
    const pending = [];
    for (let r = 0; r < rounds && !this.stopped; r++) {
      const steps = plan(this.studios, this.opts, r + 1).filter((b) => b.round === r + 1);
      for (const batch of steps) {
        for (const { studio, at } of batch.studios) {
          const wait = Math.max(0, at - (Date.now() - t0) / 1000);
          if (this.stopped) break;
          await this.later(wait, () => {
            this.log(`round=${batch.round} batch=${batch.batch} starting studio=${studio.name}`);
            pending.push(this.start(studio));
          });
        }
      }
    }
    await Promise.all(pending);
    return this.failures ? 1 : 0;
  }

  stop(signal) {
    this.stopped = true;
    for (const t of this.timers) clearLong(t);
    this.timers.clear();
    if (this.wake) this.wake();
    this.log(`${signal}: stopping the plan and the ${this.children.size} helper(s) it started`);
    for (const child of this.children) child.kill('SIGTERM');
  }
}

// Each studio's `config` checked by the project's own schema (config.py --check, run with the helper's
// Python) before any studio starts: the resolved config, or one line naming the studio and the key.
function resolveConfigs(studios, opts) {
  const checker = path.join(__dirname, '..', 'config.py');
  for (const studio of studios) {
    if (studio.config === undefined) continue;
    const r = spawnSync(opts.python, [checker, '--check'], { input: JSON.stringify(studio.config), encoding: 'utf8',
      timeout: 60000 });
    if (r.error) throw new BadInput(`cannot run ${opts.python} to check the configs (${r.error.code}); give --python PATH or PYTHON=PATH`);
    if (r.status !== 0) {
      throw new BadInput(`entry "${studio.name}" field "config": ${(r.stderr || '').trim().split('\n').pop()}`);
    }
    studio.resolved = JSON.parse(r.stdout);
    // a job is a machine of its own: were it still training when the next round's job of the same entry
    // starts, two machines would train (and push) the same run
    if (studio.target === 'job' && opts.rounds !== 1 && !studio.resolved.upload_to_cloud) {
      throw new BadInput(`entry "${studio.name}": a job's machine is gone when it ends, so without "upload_to_cloud": ` +
        'true in its "config" each round\'s job would start the run from zero; set it (and the Hub keys in the studio\'s .env)');
    }
    if (studio.target === 'job' && opts.rounds !== 1 && studio.resolved.train_max_time >= opts['batch-delay']) {
      throw new BadInput(`entry "${studio.name}": train_max_time ${studio.resolved.train_max_time} s is not below ` +
        `--batch-delay ${opts['batch-delay']} s, so its next round's job would train the same run beside it; lower ` +
        'train_max_time in its "config" or raise --batch-delay');
    }
  }
}

function printPlan(studios, opts, out = process.stdout) {
  const rounds = opts.rounds > 0 ? Math.floor(opts.rounds) : 1;
  const start = Date.now();
  const jobs = studios.filter((s) => s.target === 'job').length;
  out.write(`plan: ${studios.length - jobs} studio(s)${jobs ? ` and ${jobs} job(s)` : ''}, batch size ${opts['batch-size'] || studios.length}, ` +
    `${opts['batch-delay']} s between batches, ${opts.stagger} s stagger, ` +
    `${opts.rounds > 0 ? rounds + ' round(s)' : 'repeating until stopped (first round shown)'}\n`);
  for (const batch of plan(studios, opts, rounds)) {
    for (const { studio, at } of batch.studios) {
      const when = new Date(start + at * 1000).toISOString();
      const how = studio.target === 'job'
        ? `a job (${studio.machine || 'CPU'}${studio.interruptible === false ? '' : ', interruptible'}` +
          `${studio.max_runtime ? `, max_runtime ${studio.max_runtime} s` : ''}) in the environment of `
        : '';
      out.write(`  ${when}  (+${(at / 3600).toFixed(2)} h)  round ${batch.round} batch ${batch.batch}  ${studio.name}: ` +
        `${how}${studio.teamspaceName}/${studio.studioName} runs "${studio.commandToRun}"` +
        (studio.config ? ` with config ${JSON.stringify(studio.config)} over the defaults` : '') + '\n');
      if (studio.resolved && batch.round === 1) out.write(`    resolved config: ${JSON.stringify(studio.resolved)}\n`);
    }
  }
}

async function main(argv = process.argv.slice(2), env = process.env) {
  let opts, studios;
  try {
    opts = parseArgs(argv, env);
    if (opts.help) { process.stdout.write(usage() + '\n'); return 0; }
    studios = loadStudios(opts.studios);
    resolveConfigs(studios, opts);
  } catch (e) {
    if (e instanceof BadInput) { process.stderr.write(`trainingRunner: error: ${e.message}\n`); return 2; }
    throw e;
  }
  if (opts.dryRun) { printPlan(studios, opts); return 0; }
  const runner = new Runner(opts, studios);
  const onSignal = (sig) => runner.stop(sig);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const code = await runner.run();
  process.removeListener('SIGINT', onSignal);
  process.removeListener('SIGTERM', onSignal);
  return runner.stopped ? 0 : code;
}

if (require.main === module) {
  main().then((code) => { process.exitCode = code; }, (e) => {
    process.stderr.write(`trainingRunner: ${e && e.message ? e.message : e}\n`);
    process.exitCode = 1;
  });
}

module.exports = { parseArgs, loadStudios, plan, mask, BadInput };
