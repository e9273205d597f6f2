import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { signTranscript, verifyTranscript, identityPublicPath } from '../crypto/identity.js';
import { dataPaths, loadConfig } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { startServer } from '../daemon/main/main.js';
import { entryHash, headMessage, verifyAuditLog, type AuditVerifier } from '../storage/club/audit-log.js';
import { createClub } from '../storage/server/provisioning.js';
import { openStorage } from '../storage/server/storage.js';
import type { Db } from '../storage/engine/sqlcipher.js';
import { clubEnv, ADMIN_PASSWORD, type ClubTestEnv } from './helpers/club-server.js';
import { testIdentity } from './helpers/pair.js';

const verifier: AuditVerifier = { verify: (b, s, fp) => fp === testIdentity().fingerprint && verifyTranscript(testIdentity().spki, b, s) };
const BIN = new URL('../bin/', import.meta.url).pathname;

/** A club whose log has `n` entries or a few more (login, creates, logout). */
async function clubWithEntries(env: ClubTestEnv, n: number): Promise<string> {
  const club = await env.newClub();
  const s = env.session();
  await s.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
  for (let i = 0; i < n - 2; i++) await s.call('inventoryItems.create', { kind: 'instrument', name: `Horn ${i}` });
  await s.call('auth.logout');
  return club;
}

/** What someone who can open the store can do: lift the append-only triggers. */
function untrigger(db: Db): Db {
  db.exec('DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete');
  return db;
}

test('truncating the log together with its signed heads is reported by log verify with the first missing entry (issue 20 point 1)', { timeout: 60_000 }, async () => {
  const env = await clubEnv();
  try {
    const club = await clubWithEntries(env, 150);
    const db = env.storage.openClub(club).db;
    const before = verifyAuditLog(db, club, verifier, env.storage.listAnchors(club));
    assert.equal(before.ok, true, JSON.stringify(before));
    assert.equal(before.entries, 150);
    assert.equal(before.anchoredUpTo, 150, 'the logout head is anchored outside the store');
    assert.equal(before.unanchoredTail, 0);
    untrigger(db);
    db.prepare('DELETE FROM audit_log WHERE seq > 64').run();
    db.prepare('DELETE FROM audit_heads WHERE seq > 64').run();
    // The store alone looks intact: this is what log verify said before the anchors.
    assert.equal(verifyAuditLog(db, club, verifier).ok, true);
    const r = verifyAuditLog(db, club, verifier, env.storage.listAnchors(club));
    assert.equal(r.ok, false);
    assert.equal(r.firstBad!.seq, 65, r.firstBad!.reason);
    assert.match(r.firstBad!.reason, /entry 65 is missing.*truncated/);
  } finally {
    await env.close();
  }
});

test('rewriting an entry, re-chaining and re-signing every head with the identity key is reported at the rewritten entry (issue 20 point 1)', { timeout: 60_000 }, async () => {
  const env = await clubEnv();
  try {
    const club = await clubWithEntries(env, 150);
    const db = untrigger(env.storage.openClub(club).db);
    const rows = db.prepare('SELECT seq, time, "user", ip, session, action, entity, recordId, changes FROM audit_log ORDER BY seq').all() as Array<Record<string, unknown> & { seq: number; changes: string | null }>;
    const upd = db.prepare('UPDATE audit_log SET changes = ?, prevHash = ?, hash = ? WHERE seq = ?');
    let prev: string | null = null;
    const hashes = new Map<number, string>();
    db.transaction(() => {
      for (const r of rows) {
        const changes = r.seq === 70 ? r.changes!.replace(/Horn \d+/, 'Horn 999') : r.changes;
        const e = { seq: r.seq, time: r.time as string, user: r.user as string, ip: r.ip as string, session: r.session as string, action: r.action as string, entity: r.entity as string, recordId: r.recordId as number, changes: changes === null ? null : JSON.parse(changes) };
        const h = entryHash(prev, e);
        upd.run(changes, prev, h, r.seq);
        hashes.set(r.seq, h);
        prev = h;
      }
      // Re-sign every head in the store with the real identity key (worst case: the key leaked too).
      for (const hd of db.prepare('SELECT seq FROM audit_heads').all() as Array<{ seq: number }>) {
        const h = hashes.get(hd.seq)!;
        db.prepare('UPDATE audit_heads SET hash = ?, signature = ? WHERE seq = ?').run(h, signTranscript(testIdentity(), headMessage(club, hd.seq, h)), hd.seq);
      }
    })();
    assert.equal(verifyAuditLog(db, club, verifier).ok, true, 'the store alone is consistent after the rewrite');
    const r = verifyAuditLog(db, club, verifier, env.storage.listAnchors(club));
    assert.equal(r.ok, false);
    assert.equal(r.firstBad!.seq, 70, r.firstBad!.reason);
    assert.match(r.firstBad!.reason, /differs from what was anchored/);
  } finally {
    await env.close();
  }
});

test('an anchor whose signature does not verify is reported (someone edited server.db)', { timeout: 60_000 }, async () => {
  const env = await clubEnv();
  try {
    const club = await clubWithEntries(env, 10);
    env.storage.server.db.prepare(`UPDATE audit_anchors SET signature = zeroblob(256) WHERE club_id = ?`).run(club);
    const r = verifyAuditLog(env.storage.openClub(club).db, club, verifier, env.storage.listAnchors(club));
    assert.equal(r.ok, false);
    assert.match(r.firstBad!.reason, /anchor .* valid signature/);
  } finally {
    await env.close();
  }
});

test('an entry that is rolled back is never anchored', { timeout: 60_000 }, async () => {
  const env = await clubEnv();
  try {
    const club = await clubWithEntries(env, 4);
    const store = env.storage.openClub(club);
    const { auditFor } = await import('../daemon/club/auth.js');
    const a = auditFor(env.services, store);
    assert.throws(() =>
      store.db.transaction(() => {
        a.append({ user: 'admin', ip: null, session: null, action: 'create', entity: 'persons', recordId: 1, changes: null });
        a.signHead();
        throw new Error('rolled back');
      })(),
    );
    await new Promise<void>((r) => queueMicrotask(r));
    const r = verifyAuditLog(store.db, club, verifier, env.storage.listAnchors(club));
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.equal(r.anchoredUpTo, 4);
  } finally {
    await env.close();
  }
});

function run(program: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [join(BIN, program), ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    child.stdin!.end('');
  });
}

test('commusicctl log verify needs only the public key, and reports truncation offline (issue 20 point 1)', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-anchor-cli-'));
  const dataDir = join(dir, 'data');
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({ health: { enabled: false } }));
  const server = await startServer(loadConfig({ file, flags: { dataDir, listen: '127.0.0.1:0' } }), { logger: nullLogger() });
  let club: string;
  try {
    club = (await createClub(server.storage, { name: 'MV Anker', adminUser: 'chef', adminPassword: 'chef-password-123' })).id;
    const c = await (await import('../client/connection.js')).connect({ host: '127.0.0.1', port: server.daemon.address().port, fingerprint: server.identity.fingerprint });
    try {
      await c.request('auth.login', { club, user: 'chef', password: 'chef-password-123' });
      for (let i = 0; i < 8; i++) await c.request('inventoryItems.create', { kind: 'instrument', name: `Tuba ${i}` });
      await c.request('auth.logout');
    } finally {
      await c.close();
    }
  } finally {
    await server.stop();
  }
  try {
    const priv = dataPaths(dataDir).identityKey;
    assert.ok(existsSync(identityPublicPath(priv)), 'the daemon wrote keys/identity.pub');
    renameSync(priv, join(dir, 'identity.pem.away'));
    let r = await run('commusicctl.js', ['--data', dataDir, 'log', 'verify', '--club', club, '--json']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const ok = JSON.parse(r.stdout);
    assert.equal(ok.ok, true);
    assert.equal(ok.entries, 10);
    assert.equal(ok.anchoredUpTo, 10);
    assert.ok(ok.signedHeads >= 1);
    const st = await openStorage({ dataDir });
    const db = untrigger(st.openClub(club).db);
    db.prepare('DELETE FROM audit_log WHERE seq > 6').run();
    db.prepare('DELETE FROM audit_heads WHERE seq > 6').run();
    st.close();
    r = await run('commusicctl.js', ['--data', dataDir, 'log', 'verify', '--club', club]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /BROKEN at entry 7: entry 7 is missing/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
