import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { notifyReady } from '../daemon/main/sd-notify.js';
import { waitUntil } from './helpers/daemon.js';

/**
 * Issue 16 point 6: log lines are JSON or text, never mixed on one stream; SIGUSR1 reopens the
 * log file after logrotate moved it; systemd Type=notify readiness reaches NOTIFY_SOCKET.
 */
const ROOT = new URL('../../', import.meta.url).pathname;
const BIN = new URL('../bin/', import.meta.url).pathname;

const until = (cond: () => boolean, what: string, ms = 30_000): Promise<void> => waitUntil(cond, ms, what);

function startDaemon(dir: string, extra: string[], env: NodeJS.ProcessEnv = {}): { child: ChildProcess; out: string[]; err: string[] } {
  const child = spawn(process.execPath, [join(BIN, 'commusicd.js'), '--data', join(dir, 'data'), '--listen', '127.0.0.1:0', '--health-listen', '127.0.0.1:0', ...extra], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const out: string[] = [];
  const err: string[] = [];
  child.stdout!.on('data', (b: Buffer) => out.push(b.toString()));
  child.stderr!.on('data', (b: Buffer) => err.push(b.toString()));
  return { child, out, err };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await done;
}

test('--log-format: json lines only, or text lines only, on stderr; SIGUSR1 reopens the log file', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-logs-'));
  try {
    const logFile = join(dir, 'commusicd.log');
    const d = startDaemon(dir, ['--log-format', 'text'], { COMMUSIC_LOG_FILE: logFile });
    try {
      await until(() => /listening on/.test(d.out.join('')), 'listening');
      await until(() => existsSync(logFile) && readFileSync(logFile, 'utf8').length > 0, 'log file');
      renameSync(logFile, `${logFile}.1`);
      d.child.kill('SIGUSR1');
      await until(() => existsSync(logFile) && /log files reopened/.test(readFileSync(logFile, 'utf8')), 'the reopened file');
      assert.match(readFileSync(`${logFile}.1`, 'utf8'), /info/);
    } finally {
      await stop(d.child);
    }
    const textLines = d.err.join('').split('\n').filter(Boolean);
    assert.ok(textLines.length > 0);
    for (const l of textLines) assert.match(l, /^\d{4}-\d\d-\d\dT\S+ (error|warn|info|debug) /, `a text line: ${l}`);
    for (const l of readFileSync(logFile, 'utf8').split('\n').filter(Boolean)) assert.doesNotMatch(l, /^\{/);

    const j = startDaemon(dir, ['--log-format', 'json']);
    try {
      await until(() => /listening on/.test(j.out.join('')), 'listening');
      await until(() => j.err.join('').includes('\n'), 'a log line');
    } finally {
      await stop(j.child);
    }
    for (const l of j.err.join('').split('\n').filter(Boolean)) assert.doesNotThrow(() => JSON.parse(l), `a JSON line: ${l}`);
    for (const l of j.out.join('').split('\n').filter(Boolean)) assert.doesNotMatch(l, /^\{/, 'stdout carries the plain status lines only');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const python = spawnSync('python3', ['-c', 'import socket; print(hasattr(socket, "AF_UNIX"))'], { encoding: 'utf8' });
const haveTools = python.stdout?.trim() === 'True' && spawnSync('systemd-notify', ['--help']).status === 0;

test('Type=notify: READY=1 with our pid reaches a fake NOTIFY_SOCKET once the listener is open', { timeout: 120_000, skip: haveTools ? false : 'needs python3 and systemd-notify' }, async () => {
  const unit = readFileSync(join(ROOT, 'deploy/commusicd.service'), 'utf8');
  assert.match(unit, /^Type=notify$/m);
  assert.match(unit, /^NotifyAccess=all$/m);
  const dir = mkdtempSync(join(tmpdir(), 'commusic-notify-'));
  const sock = join(dir, 'notify.sock');
  // A unix datagram receiver (Node has none): prints the first datagram and exits.
  const rx = spawn('python3', ['-c', `import socket,sys\ns=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nprint("bound", flush=True)\ns.settimeout(60)\nprint(s.recv(4096).decode(), flush=True)`, sock], { stdio: ['ignore', 'pipe', 'pipe'] });
  let got = '';
  rx.stdout!.on('data', (b: Buffer) => (got += b.toString()));
  try {
    await until(() => got.includes('bound'), 'the fake notify socket');
    assert.equal(await notifyReady({}, 'x'), false, 'no NOTIFY_SOCKET: nothing sent');
    const d = startDaemon(dir, [], { NOTIFY_SOCKET: sock });
    try {
      await until(() => /READY=1/.test(got), 'READY=1');
      assert.match(d.out.join(''), /listening on/, 'ready only after listening');
      assert.match(got, new RegExp(`MAINPID=${d.child.pid}`));
      assert.match(got, /STATUS=listening on 127\.0\.0\.1:\d+/);
    } finally {
      await stop(d.child);
    }
  } finally {
    rx.kill();
    rmSync(dir, { recursive: true, force: true });
  }
});
