// Issue 10, must-show 1 with the real daemon: commusicd runs as a child with SQLite's temporary
// folder pointed at a private folder and an LD_PRELOAD shim (tests/temp-store.test.ts) keeping
// every file SQLite would unlink there. Over the protocol and the control socket: a streamed
// export of 10,000 persons sorted by their 2,000-character notes, a sorted list, a document
// upload and download, a backup run, a restore, a club key rotation and a master key rotation.
// Then the temporary folder, the data folder and the backup folder hold no plaintext.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { openStorage } from '../storage/server/storage.js';
import { createClub } from '../storage/server/provisioning.js';
import { loadIdentity } from '../crypto/identity.js';
import { connect } from '../client/connection.js';
import { findPlaintext, needleVariants, walk } from './store-helpers.js';
import { buildShim, hasCc } from './helpers/keep-temp-shim.js';

const bin = (name: string) => new URL(`../bin/${name}.js`, import.meta.url).pathname;
const MARK = 'Geheimnotiz-Daemonkuchen';
const DOC = 'Ehrenurkunde-Daemon-Vertraulich';
const N = 10_000;

function ctl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [bin('commusicctl'), ...args], { timeout: 120_000 }, (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
    child.stdin!.end();
  });
}

function startDaemon(data: string, config: string, env: Record<string, string>): Promise<{ child: ChildProcess; port: number; stderr: string[] }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin('commusicd'), '--data', data, '--config', config, '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    const out: string[] = [];
    const stderr: string[] = [];
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`daemon did not start: ${stderr.join('')}`));
    }, 60_000);
    child.stderr!.on('data', (b: Buffer) => stderr.push(b.toString()));
    child.stdout!.on('data', (b: Buffer) => {
      out.push(b.toString());
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(out.join(''));
      if (m) {
        clearTimeout(timer);
        resolve({ child, port: Number(m[1]), stderr });
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`daemon exited ${code}: ${stderr.join('')}`));
    });
  });
}

test('the daemon writes no plaintext temporary files: streamed export, sorted list, documents, backup, restore, rotations', { skip: !hasCc && 'needs cc for the LD_PRELOAD shim', timeout: 300_000 }, async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'commusic-tempd-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const shim = buildShim(root);
  const temp = join(root, 'temp');
  mkdirSync(temp, { mode: 0o700 });
  const data = join(root, 'data');
  const backups = join(root, 'backups');
  const config = join(root, 'config.json');
  writeFileSync(config, JSON.stringify({ health: { enabled: false }, backups: { destinations: [{ name: 'local', kind: 'local', path: backups }] } }));
  let r = await ctl(['--data', data, 'keys', 'init']);
  assert.equal(r.code, 0, r.stderr);
  const st = await openStorage({ dataDir: data });
  const { id: club } = await createClub(st, { name: 'MV Daemon Temp', adminUser: 'chef', adminPassword: 'chef-password-123', plan: 'premium' });
  const db = st.openClub(club).db;
  const ins = db.prepare('INSERT INTO persons (firstName, lastName, notes, photoConsent, blocked) VALUES (?, ?, ?, 0, 0)');
  db.transaction(() => {
    for (let i = 0; i < N; i++) ins.run(`Vorname${i}`, `${MARK}-Nachname${i}`, `${MARK}-${i} ${'Vertraulich '.repeat(170)}`.slice(0, 2000));
  })();
  st.close();
  const fingerprint = loadIdentity(join(data, 'keys', 'identity.pem')).fingerprint;

  const d = await startDaemon(data, config, { SQLITE_TMPDIR: temp, TMPDIR: temp, LD_PRELOAD: shim });
  const exited = new Promise<number | null>((res) => d.child.once('exit', (c) => res(c)));
  try {
    const conn = await connect({ host: '127.0.0.1', port: d.port, fingerprint, requestTimeoutMs: 120_000 });
    try {
      await conn.request('auth.login', { club, user: 'chef', password: 'chef-password-123' });
      const ex = await conn.request('persons.export', { stream: true, sort: [{ field: 'notes', dir: 'desc' }] });
      let bytes = 0;
      for await (const c of ex.download!) bytes += c.length;
      assert.equal((ex.payload as { count: number }).count, N);
      assert.ok(bytes > N * 2000);
      const list = await conn.request('persons.list', { sort: [{ field: 'notes' }, { field: 'lastName', dir: 'desc' }], limit: 20, offset: 9000 });
      assert.equal((list.payload as { items: unknown[] }).items.length, 20);
      const content = Buffer.from(`${DOC} `.repeat(30_000));
      const up = await conn.request('documents.upload', { kind: 'honour', name: 'urkunde.pdf' }, { upload: Readable.from([content]) });
      const docId = (up.payload as { document: { id: number } }).document.id;
      const down = await conn.request('documents.download', { id: docId });
      const parts: Buffer[] = [];
      for await (const c of down.download!) parts.push(Buffer.from(c));
      assert.ok(Buffer.concat(parts).equals(content));
    } finally {
      await conn.close();
    }
    // Through the control socket, run by the daemon.
    r = await ctl(['--data', data, 'backup', 'run', '--club', club, '--json']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal(JSON.parse(r.stdout).via, 'daemon');
    r = await ctl(['--data', data, 'backup', 'restore', '--club', club, '--from', 'local:latest', '--yes']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    r = await ctl(['--data', data, 'keys', 'rotate-club', club]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    r = await ctl(['--data', data, 'keys', 'rotate-master']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
  } finally {
    d.child.kill('SIGTERM');
    await exited;
  }
  assert.deepEqual(walk(temp), [], 'the daemon wrote nothing to the engine temporary folder');
  const needles = { ...needleVariants('note marker', MARK), ...needleVariants('note text', 'Vertraulich Vertraulich Vertraulich'), ...needleVariants('document', DOC) };
  assert.deepEqual(findPlaintext(data, needles), []);
  assert.deepEqual(findPlaintext(backups, needles), []);
});
