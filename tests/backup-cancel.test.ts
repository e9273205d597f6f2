import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BackupService } from '../daemon/backup/backup-service.js';
import { loadConfig } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { startServer } from '../daemon/main/main.js';
import { makeClubs, newStorage } from './backup-helpers.js';
import { formatBytes, timeLeft } from '../bin/ctl-backup.js';

test('progress text: sizes in binary units, time left from the average per club', () => {
  assert.equal(formatBytes(512), '512 B');
  assert.equal(formatBytes(1536), '1.5 KiB');
  assert.equal(formatBytes(5 * 1024 * 1024), '5.0 MiB');
  assert.equal(timeLeft(10_000, 0, 10), 'time left unknown');
  assert.equal(timeLeft(10_000, 2, 10), 'about 40s left');
  assert.equal(timeLeft(60_000, 1, 5), 'about 4m 0s left');
  assert.equal(timeLeft(3_600_000, 1, 3), 'about 2h 0m 0s left');
  assert.equal(timeLeft(1000, 3, 3), 'done');
});

/**
 * Issue 16: `backup cancel` stops the daemon's running backup run after the clubs under way;
 * Ctrl-C during `commusicctl backup run` says the daemon continues and offers `backup cancel`.
 */
const bin = (name: string) => new URL(`../bin/${name}.js`, import.meta.url).pathname;

test('BackupService.cancel: no further club starts, the report names the clubs not started; no run, nothing to cancel', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-bcancel-'));
  const st = await newStorage(join(dir, 'data'));
  try {
    const clubs = await makeClubs(st, 4);
    const svc = new BackupService({ storage: st, config: { destinations: [{ name: 'local', kind: 'local', path: join(dir, 'b') }], parallelism: 1 } });
    assert.deepEqual(svc.cancel(), { running: false });
    let answer: { running: boolean } | undefined;
    const r = await svc.runNightly({ onProgress: (done) => void (done === 1 ? (answer = svc.cancel()) : undefined) });
    assert.deepEqual(answer, { running: true });
    assert.equal(r.ok, 1);
    assert.ok(r.bytes > 0, 'the report counts the archive bytes');
    assert.equal(r.cancelled?.notStarted.length, 3);
    const stored = (await svc.destination('local').list()).map((a) => a.clubId);
    assert.deepEqual([...stored, ...r.cancelled!.notStarted].sort(), [...clubs].sort(), 'the club under way finished, the others were not started');
    assert.equal((await svc.destination('local').list()).length, 1);
    assert.equal(st.server.getMeta('backup.lastRun'), undefined, 'a cancelled run is not the last complete run');
    // The next run is not cancelled.
    const again = await svc.runNightly();
    assert.equal(again.ok, 4);
    assert.equal(again.cancelled, undefined);
    await svc.close();
  } finally {
    st.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('commusicctl backup run, SIGINT: exit 130, the daemon continues, backup cancel offered; backup cancel answers', { timeout: 180_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-bcancel-cli-'));
  const data = join(dir, 'data');
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({ health: { enabled: false }, backups: { destinations: [{ name: 'local', kind: 'local', path: join(dir, 'b') }] } }));
  const server = await startServer(loadConfig({ file, flags: { dataDir: data, listen: '127.0.0.1:0' } }), { logger: nullLogger() });
  try {
    await makeClubs(server.storage, 40);
    const child = spawn(process.execPath, [bin('commusicctl'), '--data', data, 'backup', 'run', '--all'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      child.stderr.on('data', (b: Buffer) => {
        stderr += b.toString();
        if (/backup 1\/40 clubs/.test(stderr)) resolve();
      });
      void exited.then(() => reject(new Error(`exited before the first club: ${stderr}`)));
    });
    child.kill('SIGINT');
    assert.equal(await exited, 130, stderr);
    assert.match(stderr, /^backup 1\/40 clubs: \S+ done, \d+(\.\d)? (B|KiB|MiB) so far, about (\d+m )?\d+s left$/m, 'progress shows bytes and time left');
    assert.match(stderr, /interrupted: .*continues in the daemon/);
    assert.match(stderr, /"commusicctl backup cancel" stops a run the daemon carries on/);
    assert.doesNotMatch(stderr, /\x1b\[\?7l/, 'no line-wrap-off sequence is left behind');
    const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [bin('commusicctl'), '--data', data, 'backup', 'cancel', '--json'], { timeout: 60_000 }, (err, stdout, se) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr: se }));
    });
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { running: boolean; via: string };
    assert.equal(out.via, 'daemon');
    assert.equal(typeof out.running, 'boolean');
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
