// node --test serverRunner/tests/ : the plan, spawning, kill-after, secrets, bad input, dry-run, SIGINT.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');

const RUNNER = path.join(__dirname, '..', 'trainingRunner.js');
const { plan, loadStudios } = require(RUNNER);

// A stand-in for sendReq.py: records its argv and environment, then behaves as MODE says.
const STANDIN = `
import json, os, sys, time
with open(os.environ["RECORD_FILE"], "a") as f:
    f.write(json.dumps({"argv": sys.argv, "t": time.time(), "env": {k: v for k, v in os.environ.items() if k.startswith("STUDIO_")}}) + "\\n")
mode = os.environ.get("MODE", "ok")
print("helper says hello to " + os.environ["STUDIO_NAME"] + " key " + os.environ["STUDIO_API_KEY"], flush=True)
if mode == "sleep":
    time.sleep(30)
sys.exit(3 if mode == "fail" else 0)
`;

function studio(i, extra = {}) {
  return { user: 'alice', apiKey: `SECRETKEY${i}`, userID: `SECRETUID${i}`, teamspaceName: 'ts',
           studioName: `s${i}`, commandToRun: 'python run.py', ...extra };
}

function setup(studios) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'runner-'));
  const file = path.join(dir, 'studios.json');
  fs.writeFileSync(file, typeof studios === 'string' ? studios : JSON.stringify(studios));
  const helper = path.join(dir, 'standin.py');
  fs.writeFileSync(helper, STANDIN);
  return { dir, file, helper, record: path.join(dir, 'record.jsonl') };
}

function run(ctx, args, env = {}) {
  return spawnSync(process.execPath, [RUNNER, '--studios', ctx.file, '--helper', ctx.helper, '--python', 'python3', ...args],
    { env: { ...process.env, RECORD_FILE: ctx.record, ...env }, encoding: 'utf8', timeout: 60000 });
}

function records(ctx) {
  if (!fs.existsSync(ctx.record)) return [];
  return fs.readFileSync(ctx.record, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
}

test('plan: batches, stagger and rounds', () => {
  const studios = [1, 2, 3].map((i) => ({ name: `studio_${i}` }));
  const p = plan(studios, { 'batch-size': 2, 'batch-delay': 100, stagger: 5 }, 2);
  assert.deepStrictEqual(p.map((b) => [b.round, b.batch, b.at]), [[1, 1, 0], [1, 2, 100], [2, 1, 200], [2, 2, 300]]);
  assert.deepStrictEqual(p[0].studios.map((s) => [s.studio.name, s.at]), [['studio_1', 0], ['studio_2', 5]]);
  const one = plan(studios, { 'batch-size': 0, 'batch-delay': 14400, stagger: 5 }, 1);
  assert.strictEqual(one.length, 1);
  assert.strictEqual(one[0].studios.length, 3); // default: every studio in one batch
});

test('starts every studio in compressed time, credentials only in the environment', () => {
  const ctx = setup({ studio_1: studio(1), studio_2: studio(2), studio_3: studio(3, { machine: 'T4' }) });
  const r = run(ctx, ['--batch-size', '2', '--batch-delay', '1', '--stagger', '0.2', '--rounds', '2']);
  assert.strictEqual(r.status, 0, r.stderr);
  const recs = records(ctx);
  assert.strictEqual(recs.length, 6);
  const order = recs.map((x) => x.env.STUDIO_ENTRY);
  assert.deepStrictEqual(order, ['studio_1', 'studio_2', 'studio_3', 'studio_1', 'studio_2', 'studio_3']);
  // the runner's own timestamped start lines (the helper's clock includes Python's start-up time)
  const starts = [...r.stdout.matchAll(/^(\S+) round=(\d) batch=(\d) starting studio=(\S+)$/gm)]
    .map((m) => [Date.parse(m[1]) / 1000, m[4]]);
  assert.deepStrictEqual(starts.map((s) => s[1]), order);
  const rel = starts.map((s) => s[0] - starts[0][0]);
  assert.ok(rel[1] >= 0.15, 'stagger inside a batch');
  assert.ok(rel[2] >= 0.9, 'batches a batch-delay apart');
  assert.ok(rel[3] >= 1.9, 'the second round follows');
  for (const rec of recs) {
    assert.deepStrictEqual(rec.argv.slice(1), ['--from-env']);
    assert.ok(!rec.argv.join(' ').includes('SECRET'));
    assert.ok(rec.env.STUDIO_API_KEY.startsWith('SECRETKEY') && rec.env.STUDIO_USER_ID.startsWith('SECRETUID'));
  }
  assert.strictEqual(recs[2].env.STUDIO_MACHINE, 'T4');
  assert.ok(!(r.stdout + r.stderr).includes('SECRET'), 'no secret in the output');
  assert.match(r.stdout, /\[studio_1\] helper says hello to s1 key \*\*\*/); // prefixed, masked
  assert.strictEqual((r.stdout.match(/outcome=started/g) || []).length, 6);
  assert.match(r.stdout, /^\d{4}-\d\d-\d\dT\S+ /m); // timestamps
});

test('a helper that does not return is killed after kill-after', () => {
  const ctx = setup({ studio_1: studio(1) });
  const t0 = Date.now();
  const r = run(ctx, ['--rounds', '1', '--kill-after', '0.5'], { MODE: 'sleep' });
  assert.strictEqual(r.status, 1);
  assert.ok(Date.now() - t0 < 15000);
  assert.match(r.stdout, /helper still running after 0.5 s: SIGTERM/);
  assert.match(r.stdout, /start studio=studio_1 outcome=killed/);
});

test('a failed start is logged and makes the exit code 1', () => {
  const ctx = setup({ studio_1: studio(1), studio_2: studio(2) });
  const r = run(ctx, ['--rounds', '1', '--stagger', '0'], { MODE: 'fail' });
  assert.strictEqual(r.status, 1);
  assert.strictEqual((r.stdout.match(/outcome=failed exit=3/g) || []).length, 2);
});

test('an interpreter that cannot be run is named with how to choose another', () => {
  const ctx = setup({ studio_1: studio(1) });
  const r = spawnSync(process.execPath, [RUNNER, '--studios', ctx.file, '--helper', ctx.helper, '--python',
    path.join(ctx.dir, 'no-such-python'), '--rounds', '1', '--batch-delay', '0'],
  { env: { ...process.env, RECORD_FILE: ctx.record }, encoding: 'utf8', timeout: 60000 });
  assert.strictEqual(r.status, 1);
  assert.match(r.stdout + r.stderr, /cannot run .*no-such-python: ENOENT; give an interpreter that has lightning-sdk with --python PATH or PYTHON=PATH/);
  assert.ok(!(r.stdout + r.stderr).includes('SECRET'));
});

test('bad studios.json: one line naming the entry and field, exit 2', () => {
  const cases = [
    ['{"studio_1": {', /not valid JSON/],
    ['[]', /must be an object of entries/],
    [JSON.stringify({ studio_1: { ...studio(1), apiKey: undefined } }), /entry "studio_1" lacks field "apiKey"/],
    [JSON.stringify({ studio_1: studio(1), studio_2: { ...studio(1), apiKey: 'x' } }),
      /entry "studio_2" field "studioName" repeats the studio of entry "studio_1"/],
    [JSON.stringify({ studio_1: { ...studio(1), machine: 5 } }), /field "machine"/],
    [`{"studio_1": ${JSON.stringify(studio(1))}, "studio_1": ${JSON.stringify(studio(2))}}`,
      /entry "studio_1" appears twice/],
  ];
  const example = fs.readFileSync(path.join(__dirname, '..', '..', 'studios.json.example'), 'utf8');
  for (const args of [['--rounds', '1'], ['--dry-run']]) {  // the example as it is: placeholders, dry-run too
    const ctx = setup(example);
    const r = run(ctx, args);
    assert.strictEqual(r.status, 2, r.stderr);
    assert.match(r.stderr.trim(), /^.*entry "studio_1" field "user" is still the placeholder "your-lightning-username"; fill in your own value$/);
  }
  for (const [text, message] of cases) {
    const ctx = setup(text);
    const r = run(ctx, ['--rounds', '1']);
    assert.strictEqual(r.status, 2, text);
    const lines = r.stderr.trim().split('\n');
    assert.strictEqual(lines.length, 1, r.stderr);
    assert.match(lines[0], message);
    assert.ok(!r.stderr.includes('SECRET'));
    assert.deepStrictEqual(records(ctx), []);
  }
  const ctx = setup('{}');
  assert.strictEqual(run(ctx, ['--bogus']).status, 2);
  assert.strictEqual(run(ctx, ['--stagger', '-1']).status, 2);
  assert.throws(() => loadStudios(path.join(ctx.dir, 'missing.json')), /cannot be read/);
});

test('a fractional batch size or rounds is one line and exit 2, also with --dry-run (it used to hang)', () => {
  const ctx = setup({ studio_1: studio(1), studio_2: studio(2) });
  for (const [args, env] of [[['--batch-size', '0.5'], {}], [[], { BATCH_SIZE: '0.5' }], [['--rounds', '1.5'], {}]]) {
    const r = run(ctx, ['--dry-run', ...args], env);
    assert.strictEqual(r.status, 2, r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.strictEqual(lines.length, 1);
    assert.match(lines[0], /must be a whole number/);
  }
});

test('--dry-run prints the plan with times and starts nothing', () => {
  const ctx = setup({ studio_1: studio(1), studio_2: studio(2) });
  const r = run(ctx, ['--dry-run', '--batch-size', '1', '--rounds', '2']);
  assert.strictEqual(r.status, 0);
  assert.deepStrictEqual(records(ctx), []);
  const lines = r.stdout.trim().split('\n');
  assert.strictEqual(lines.length, 5);
  assert.match(lines[2], /\(\+4\.00 h\)\s+round 1 batch 2\s+studio_2: ts\/s2 runs "python run.py"/);
  assert.match(lines[4], /\(\+12\.00 h\)\s+round 2 batch 2/);
  assert.ok(!r.stdout.includes('SECRET'));
});

test('--help explains the options', () => {
  const r = spawnSync(process.execPath, [RUNNER, '--help'], { encoding: 'utf8' });
  assert.strictEqual(r.status, 0);
  for (const opt of ['--batch-size', '--batch-delay', '--stagger', '--rounds', '--kill-after', '--python', '--dry-run',
    'grid', 'studioNames', 'target "job"']) {
    assert.ok(r.stdout.includes(opt), opt);
  }
});

test('SIGINT stops the plan and ends the helpers it started', async () => {
  const ctx = setup({ studio_1: studio(1), studio_2: studio(2) });
  const child = spawn(process.execPath, [RUNNER, '--studios', ctx.file, '--helper', ctx.helper, '--batch-size', '1',
    '--batch-delay', '30', '--kill-after', '60'], { env: { ...process.env, RECORD_FILE: ctx.record, MODE: 'sleep' } });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  const deadline = Date.now() + 20000;
  while (records(ctx).length < 1) {
    assert.ok(Date.now() < deadline, 'the first helper did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
  const t0 = Date.now();
  child.kill('SIGINT');
  const code = await new Promise((resolve) => child.on('close', resolve));
  assert.ok(Date.now() - t0 < 10000);
  assert.strictEqual(code, 0);
  assert.match(out, /SIGINT: stopping the plan and the 1 helper\(s\) it started/);
  assert.match(out, /outcome=killed|outcome=failed exit=SIGTERM/);
  assert.strictEqual(records(ctx).length, 1, 'no further studio started');
});

test('an empty delay is refused, not read as 0', () => {
  const ctx = setup({ studio_1: studio(1) });
  for (const args of [['--batch-delay='], ['--kill-after', ' ']]) {
    const r = run(ctx, ['--dry-run', ...args]);
    assert.strictEqual(r.status, 2, r.stderr);
    assert.strictEqual(r.stderr.trim().split('\n').length, 1);
    assert.match(r.stderr, /must be a number >= 0/);
  }
});

test('a delay past Node\'s 24.8-day timer limit waits instead of firing at once', async () => {
  const ctx = setup({ studio_1: studio(1), studio_2: studio(2) });
  const child = spawn(process.execPath, [RUNNER, '--studios', ctx.file, '--helper', ctx.helper, '--python', 'python3',
    '--batch-size', '1', '--batch-delay', '3000000', '--kill-after', '3000000', '--rounds', '1'],
  { env: { ...process.env, RECORD_FILE: ctx.record } });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const deadline = Date.now() + 20000;
  while (!/outcome=started/.test(out)) {
    assert.ok(Date.now() < deadline, `the first helper did not start: ${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  await new Promise((r) => setTimeout(r, 1500));  // the second batch is ~35 days away, not due now
  child.kill('SIGINT');
  await new Promise((resolve) => child.on('close', resolve));
  assert.strictEqual(records(ctx).length, 1);
  assert.doesNotMatch(out, /TimeoutOverflowWarning|outcome=killed/);
});

test('a studio config is checked before any studio starts, and the dry run shows it resolved', () => {
  const good = setup({ studio_1: studio(1, { config: { name: 'seed1', seed: 1 } }), studio_2: studio(2) });
  const dry = run(good, ['--dry-run']);
  assert.strictEqual(dry.status, 0, dry.stderr);
  assert.match(dry.stdout, /with config \{"name":"seed1","seed":1\} over the defaults/);
  assert.match(dry.stdout, /resolved config: \{"name":"seed1",[^\n]*"learning_rate":0\.0001,[^\n]*"seed":1,/);
  const started = run(good, ['--rounds', '1', '--batch-delay', '0', '--stagger', '0']);
  assert.strictEqual(started.status, 0, started.stderr);
  const sent = records(good).map((r) => r.env.STUDIO_CONFIG);
  assert.deepStrictEqual(sent.sort(), ['', '{"name":"seed1","seed":1}']);
  for (const [config, message] of [[{ lerning_rate: 0.1 }, /entry "studio_2" field "config": unknown config key 'lerning_rate'; did you mean 'learning_rate'\?/],
    [{ seed: -3 }, /entry "studio_2" field "config": config key 'seed' must be >= 0/],
    [[1, 2], /entry "studio_2" field "config" must be an object/]]) {
    const bad = setup({ studio_1: studio(1), studio_2: studio(2, { config }) });
    const r = run(bad, ['--rounds', '1', '--batch-delay', '0']);
    assert.strictEqual(r.status, 2, r.stderr);
    assert.strictEqual(r.stderr.trim().split('\n').length, 1);
    assert.match(r.stderr, message);
    assert.strictEqual(records(bad).length, 0, 'no studio started');
  }
});

test('a grid expands into one run per combination, each with its own run name and resolved config', () => {
  const ctx = setup({
    sweep: studio(1, { config: { name: 'cr', total_steps: 1000 }, grid: { seed: [0, 1], learning_rate: [0.0001, 5e-5] },
      studioNames: ['g1', 'g2', 'g3', 'g4'] }),
    jobs: studio(9, { target: 'job', machine: 'T4', max_runtime: 3600, interruptible: false, grid: { seed: [5, 6] },
      config: { upload_to_cloud: true } }),
  });
  const dry = run(ctx, ['--dry-run']);
  assert.strictEqual(dry.status, 0, dry.stderr);
  for (const [entry, where] of [['sweep/seed0-learning_rate0.0001', 'ts/g1'], ['sweep/seed1-learning_rate0.00005', 'ts/g4'],
    ['jobs/seed6', 'a job (T4, max_runtime 3600 s) in the environment of ts/s9']]) {
    assert.ok(dry.stdout.includes(`${entry}: ${where} runs "python run.py"`), `${entry}\n${dry.stdout}`);
  }
  assert.match(dry.stdout, /resolved config: \{"name":"cr-seed1-learning_rate0.00005",[^\n]*"learning_rate":0.00005,[^\n]*"seed":1,/);
  const r = run(ctx, ['--rounds', '1', '--batch-delay', '0', '--stagger', '0']);
  assert.strictEqual(r.status, 0, r.stderr);
  const sent = Object.fromEntries(records(ctx).map((x) => [x.env.STUDIO_ENTRY, x.env]));
  assert.strictEqual(Object.keys(sent).length, 6);
  assert.deepStrictEqual(JSON.parse(sent['sweep/seed0-learning_rate0.00005'].STUDIO_CONFIG),
    { name: 'cr-seed0-learning_rate0.00005', total_steps: 1000, seed: 0, learning_rate: 5e-5 });
  assert.strictEqual(sent['sweep/seed0-learning_rate0.00005'].STUDIO_NAME, 'g2');
  const job = sent['jobs/seed5'];
  assert.deepStrictEqual([job.STUDIO_TARGET, job.STUDIO_NAME, job.STUDIO_MACHINE, job.STUDIO_INTERRUPTIBLE, job.STUDIO_MAX_RUNTIME],
    ['job', 's9', 'T4', 'false', '3600']);
  assert.deepStrictEqual(JSON.parse(job.STUDIO_CONFIG), { upload_to_cloud: true, seed: 5, name: 'carracing-seed5' });
  assert.strictEqual(sent['sweep/seed0-learning_rate0.0001'].STUDIO_TARGET, '');
});

test('bad grids and job fields: one line naming the entry, exit 2, nothing started', () => {
  const cases = [
    [{ a: studio(1, { grid: { seed: [0, 1] } }) }, /entry "a": a studio grid of 2 runs needs "studioNames", a list of 2/],
    [{ a: studio(1, { grid: { seed: [] }, studioNames: [] }) }, /entry "a" field "grid" key "seed" must be a non-empty list/],
    [{ a: studio(1, { grid: [1], target: 'job' }) }, /entry "a" field "grid" must be an object/],
    [{ a: studio(1, { grid: { name: ['x'] }, target: 'job' }) }, /cannot vary "name"/],
    [{ a: studio(1, { config: { seed: 1 }, grid: { seed: [2] }, target: 'job' }) }, /key "seed" is in both "config" and "grid"/],
    [{ a: studio(1, { grid: { lerning_rate: [1] }, target: 'job' }) }, /entry "a\/lerning_rate1" field "config": unknown config key 'lerning_rate'/],
    [{ a: studio(1, { target: 'job', config: { seed: 1 } }) }, /entry "a": a job's machine is gone when it ends, so without "upload_to_cloud"/],
    [{ a: studio(1, { target: 'vm' }) }, /entry "a" field "target" must be "studio" or "job", got "vm"/],
    [{ a: studio(1, { interruptible: true }) }, /entry "a" field "interruptible" applies to "target": "job" entries only/],
    [{ a: studio(1, { target: 'job', max_runtime: 5 }) }, /entry "a" field "max_runtime" must be whole seconds >= 60, got 5/],
    [{ a: studio(1, { target: 'job', config: { train_max_time: 20000, upload_to_cloud: true } }) },
      /entry "a": train_max_time 20000 s is not below --batch-delay 14400 s/],
    [{ a: studio(1, { studioNames: ['x'] }) }, /field "studioNames" needs a "grid"/],
  ];
  for (const [studios, message] of cases) {
    const ctx = setup(studios);
    const r = run(ctx, ['--rounds', '2', '--batch-delay', '14400']);
    assert.strictEqual(r.status, 2, `${JSON.stringify(studios)}: ${r.stderr}`);
    assert.strictEqual(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, message);
    assert.ok(!r.stderr.includes('SECRET'));
    assert.deepStrictEqual(records(ctx), []);
  }
});
