import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { startServer } from '../daemon/main/main.js';
import { createClub } from '../storage/server/provisioning.js';
import { openStorage } from '../storage/server/storage.js';

const BIN = new URL('../bin/', import.meta.url).pathname;

function run(program: string, args: string[], stdin?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [join(BIN, program), ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    child.stdin!.end(stdin ?? '');
  });
}

test('commusic call and commusicctl log show/verify against the running daemon, then verify offline after tampering (points 4, CLI)', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-log-cli-'));
  const dataDir = join(dir, 'data');
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({ health: { enabled: false } }));
  const server = await startServer(loadConfig({ file, flags: { dataDir, listen: '127.0.0.1:0' } }), { logger: nullLogger() });
  let stopped = false;
  try {
    const { id: club } = await createClub(server.storage, { name: 'MV CLI', adminUser: 'chef', adminPassword: 'chef-password-123' });
    const g = ['--server', `127.0.0.1:${server.daemon.address().port}`, '--fingerprint', server.identity.fingerprint];
    const login = [...g, '--club', club, '--user', 'chef', '--password-stdin'];
    let r = await run('commusic.js', [...login, 'call', 'persons.create', '--json', JSON.stringify({ firstName: 'Eva', lastName: 'Eder', photoConsent: false, blocked: false })], 'chef-password-123\n');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const pid = JSON.parse(r.stdout).record.id;
    r = await run('commusic.js', [...login, 'call', 'persons.update', '--json', JSON.stringify({ id: pid, city: 'Salzburg' })], 'chef-password-123\n');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.deepEqual(JSON.parse(r.stdout).changed, ['city']);
    // errors: JSON with the code, non-zero exit
    // (errors are one JSON line on stderr with --json; the old --json PAYLOAD spelling above warned)
    assert.match(r.stderr, /deprecated/);
    r = await run('commusic.js', [...login, 'call', 'persons.get', '--payload', '{"id": 999}', '--json'], 'chef-password-123\n');
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.equal(JSON.parse(r.stderr).error.code, 'NOT_FOUND');
    r = await run('commusic.js', [...login, 'call', 'persons.list', '--json'], 'wrong-password\n');
    assert.equal(r.code, 1);
    assert.equal(JSON.parse(r.stderr).error.code, 'UNAUTHENTICATED');
    // support reads the log through the daemon
    r = await run('commusicctl.js', ['--data', dataDir, 'log', 'show', '--club', club, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const entries = JSON.parse(r.stdout).entries as Array<{ seq: number; action: string; user: string; changes: unknown }>;
    assert.deepEqual(entries.map((e) => e.action), ['login', 'create', 'logout', 'login', 'update', 'logout', 'login', 'logout', 'login.failed']);
    r = await run('commusicctl.js', ['--data', dataDir, 'log', 'show', '--club', club, '--action', 'update']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^5\t\S+\tchef\t127\.0\.0\.1\tupdate persons 1\tcity: null -> "Salzburg"\n$/);
    r = await run('commusicctl.js', ['--data', dataDir, 'log', 'show', '--club', club, '--user', 'chef', '--since', '2000-01-01', '--json']);
    assert.equal(JSON.parse(r.stdout).entries.length, 9);
    r = await run('commusicctl.js', ['--data', dataDir, 'log', 'verify', '--club', club]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /OK, 9 entries/);
    await server.stop();
    stopped = true;
    // Offline, someone with the data key alters entry 5 in the store.
    const st = await openStorage({ dataDir });
    const db = st.openClub(club).db;
    db.exec('DROP TRIGGER audit_log_no_update');
    db.prepare(`UPDATE audit_log SET changes = replace(changes, 'Salzburg', 'Wien') WHERE seq = 5`).run();
    st.close();
    r = await run('commusicctl.js', ['--data', dataDir, 'log', 'verify', '--club', club]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /BROKEN at entry 5: entry 5 was altered/);
    r = await run('commusicctl.js', ['--data', dataDir, 'log', 'verify', '--club', club, '--json']);
    assert.equal(JSON.parse(r.stdout).firstBad.seq, 5);
  } finally {
    if (!stopped) await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
