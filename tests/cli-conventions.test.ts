import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { Command, CommanderError } from 'commander';
import { buildProgram } from '../bin/commusic-program.js';
import { program as ctlProgram } from '../bin/ctl-program.js';
import { program as daemonProgram } from '../bin/daemon-program.js';
import { promptSecret } from '../bin/cli-util.js';

/**
 * Issue 16 points 2 and 4: command-line conventions over every command of the three programs
 * (the commander trees are walked, so a new command is covered without editing this file), and
 * every password or passphrase input: never an argv value; a stdin form, a file form, a prompt.
 */
const BIN = new URL('../bin/', import.meta.url).pathname;
const PKG = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

function run(prog: string, args: string[], stdin = '', env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [join(BIN, `${prog}.js`), ...args], { timeout: 30_000, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    child.stdin!.end(stdin);
  });
}

interface Leaf {
  prog: string;
  path: string[];
  cmd: Command;
}

function leaves(prog: string, root: Command): Leaf[] {
  const out: Leaf[] = [];
  const walk = (c: Command, path: string[]) => {
    const subs = c.commands.filter((s) => s.name() !== 'help');
    if (subs.length === 0) out.push({ prog, path, cmd: c });
    for (const s of subs) walk(s, [...path, s.name()]);
  };
  walk(root, []);
  return out;
}

const trees: [string, Command][] = [
  ['commusic', buildProgram()],
  ['commusicctl', ctlProgram],
  ['commusicd', daemonProgram],
];
const all = trees.flatMap(([p, c]) => leaves(p, c));
/** Every option of a command and the programs above it. */
const optionsOf = (c: Command): { long: string; takesValue: boolean }[] => {
  const opts: { long: string; takesValue: boolean }[] = [];
  for (let x: Command | null = c; x; x = x.parent) for (const o of x.options) opts.push({ long: o.long ?? '', takesValue: o.required || o.optional });
  return opts;
};

test('every command: usage errors are CommanderErrors (exit 2), output commands offer --json', () => {
  assert.ok(all.length >= 40, `walked ${all.length} commands`);
  const noJson: string[] = [];
  for (const [prog, root] of trees) {
    for (const leaf of leaves(prog, root)) {
      const name = [prog, ...leaf.path].join(' ');
      // An unknown option never reaches the action: commander reports a usage error (mapped to exit 2 by runMain).
      assert.throws(() => root.parse([...leaf.path, '--no-such-option-xyz'], { from: 'user' }), (e: unknown) => e instanceof CommanderError && e.exitCode !== 0, name);
      if (prog !== 'commusicd' && !leaf.cmd.options.some((o) => o.long === '--json')) noJson.push(name);
    }
  }
  assert.deepEqual(noJson, [], 'every command offers --json');
});

test('every password and passphrase input: no argv value; a stdin form, a file form (or fd), and a prompt', () => {
  const secretRe = /pass(word|phrase)/;
  const found: string[] = [];
  for (const leaf of all) {
    const opts = optionsOf(leaf.cmd);
    const names = new Set(opts.map((o) => o.long));
    for (const o of opts.filter((o) => secretRe.test(o.long))) {
      const name = `${[leaf.prog, ...leaf.path].join(' ')} ${o.long}`;
      found.push(name);
      if (o.takesValue) assert.match(o.long, /-(file|fd)$/, `${name} takes a value: only a file name or descriptor`);
      const base = o.long.replace(/^--(ask-)?/, '').replace(/-(stdin|file|fd)$/, '');
      if (o.long.endsWith('-stdin')) assert.ok(names.has(`--${base}-file`), `${name} has a file form --${base}-file`);
      if (o.long.endsWith('-file') && !o.long.startsWith('--passphrase-file') ) assert.ok(names.has(`--${base}-stdin`), `${name} has a stdin form`);
    }
  }
  // The table this covers (a new secret option joins it automatically).
  for (const must of [
    'commusic users list --password-file',
    'commusic passwd --new-password-stdin',
    'commusic passwd --new-password-file',
    'commusic users add --user-password-file',
    'commusic users reset-password --user-password-stdin',
    'commusic backup set-passphrase --passphrase-file',
    'commusic backup set-passphrase --current-passphrase-stdin',
    'commusicctl club create --password-file',
    'commusicctl backup decrypt --passphrase-file',
    'commusicctl backup restore --passphrase-file',
    'commusicctl backup verify --passphrase-file',
    'commusicctl status --passphrase-file',
    'commusicd --passphrase-file',
  ]) assert.ok(found.includes(must), `${must} exists`);
});

test('promptSecret does not echo what is typed', async () => {
  const input = new PassThrough() as PassThrough & { isTTY?: boolean };
  input.isTTY = true;
  const out = new PassThrough();
  let shown = '';
  out.on('data', (b: Buffer) => (shown += b.toString()));
  const p = promptSecret('password: ', input, out);
  input.write('s3cret-typed\r');
  assert.equal(await p, 's3cret-typed');
  assert.match(shown, /password: /);
  assert.doesNotMatch(shown, /s3cret/);
});

test('spawned: --version, usage exit 2 with a suggestion, one-line errors, JSON errors on stderr, secrets refused on argv', { timeout: 120_000 }, async () => {
  for (const prog of ['commusic', 'commusicctl', 'commusicd']) {
    const v = await run(prog, ['--version']);
    assert.equal(v.code, 0, prog);
    assert.equal(v.stdout.trim(), PKG.version);
  }
  let r = await run('commusicctl', ['club', 'lst']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /^error: unknown command 'lst' \(Did you mean list\?\)\n$/);
  r = await run('commusic', ['pign']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /Did you mean ping\?/);
  r = await run('commusicctl', ['bans', 'add', '192.0.2.1', '--json']);
  assert.equal(r.code, 2);
  assert.equal(JSON.parse(r.stderr).error.code, 'USAGE');
  assert.equal(r.stdout, '');
  // --json before the command means the same as after it (was "unknown option '--json'").
  r = await run('commusic', ['--json', '--server', '127.0.0.1:9', '--fingerprint', 'ab'.repeat(32), 'ping']);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(JSON.parse(r.stderr).error.code, 'CONNECT_FAILED');
  r = await run('commusicctl', ['--json', 'bans', 'add', '192.0.2.1']);
  assert.equal(r.code, 2);
  assert.equal(JSON.parse(r.stderr).error.code, 'USAGE');
  // A monitor typo is a usage error, not an outage.
  r = await run('commusicctl', ['monitor', '--once', '--target', '127.0.0.1:9', '--fingerprint', 'deadbeef']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /not a SHA-256 fingerprint/);
  // A malformed pinned fingerprint is a usage error too, found before any connection.
  r = await run('commusic', ['--server', '127.0.0.1:9', '--fingerprint', 'abc', 'ping']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /64 hex digits/);
  // A login without a password source and without a terminal: usage error naming the forms, nothing sent.
  r = await run('commusic', ['--server', '127.0.0.1:9', '--fingerprint', 'ab'.repeat(32), '--club', 'c1', '--user', 'anna', 'whoami']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--password-stdin or --password-file/);
  // call: a secret in a command-line payload is refused before anything is sent; stdin carries it.
  for (const payload of ['{"password":"x"}', '{"passphrase":"long-enough-passphrase"}', '{"oldPassword":"a","newPassword":"b"}']) {
    r = await run('commusic', ['--server', '127.0.0.1:9', '--fingerprint', 'ab'.repeat(32), 'call', 'backup.setPassphrase', '--payload', payload]);
    assert.equal(r.code, 2, payload);
    assert.match(r.stderr, /--payload - on standard input/);
  }
  r = await run('commusic', ['--server', '127.0.0.1:9', '--fingerprint', 'ab'.repeat(32), 'call', 'server.info', '--json', '{"password":"x"}']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /deprecated/);
  // COMMUSIC_CONFIG is read by the daemon: a broken file named there stops it with exit 1.
  const dir = mkdtempSync(join(tmpdir(), 'commusic-conv-'));
  try {
    writeFileSync(join(dir, 'bad.json'), '{"listn": "127.0.0.1:0"}');
    r = await run('commusicd', ['--data', join(dir, 'data')], '', { COMMUSIC_CONFIG: join(dir, 'bad.json') });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /listn/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
