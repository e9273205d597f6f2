// Issue 15 point 4: the identity key files of a rollover. The next key is protected like the
// current one; the steps run offline through commusicctl too; an interrupted switch is repaired;
// a retired key is trusted for verification only through a statement its successor signed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, linkSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fingerprintOf, generateIdentity, identityPublicPath, IdentityKeyError, saveIdentity } from '../crypto/identity.js';
import { identityFiles, identityStatus, loadIdentityKeySet, readRotationLog, retireIdentity, startIdentityRotation, switchIdentity, trustedIdentityKeys } from '../crypto/identity-keyring.js';
import { noticeFor } from '../daemon/main/identity-keys.js';
import { parseIdentityNotice } from '../protocol/identity-notice.js';
import { signRotation, type RotationStatement } from '../crypto/identity-rotation.js';
import { watchKeyFile, type SecurityEvent } from '../crypto/key-watch.js';
import { waitUntil } from './helpers/daemon.js';

const BIN = new URL('../bin/', import.meta.url).pathname;

function ctl(dataDir: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [join(BIN, 'commusicctl.js'), '--data', dataDir, ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    child.stdin!.end('');
  });
}

function folder(): { dataDir: string; key: string; cleanup(): void } {
  const dataDir = mkdtempSync(join(tmpdir(), 'commusic-idring-'));
  const key = join(dataDir, 'keys', 'identity.pem');
  saveIdentity(key, generateIdentity());
  return { dataDir, key, cleanup: () => rmSync(dataDir, { recursive: true, force: true }) };
}

test('commusicctl keys rotate-identity runs every step on the data folder when no daemon runs; status lists the retired key', { timeout: 120_000 }, async (t) => {
  const { dataDir, key, cleanup } = folder();
  t.after(cleanup);
  const before = loadIdentityKeySet(key).current.fingerprint;
  const s1 = await ctl(dataDir, ['keys', 'rotate-identity', 'start', '--json']);
  assert.equal(s1.code, 0, s1.stderr);
  const started = JSON.parse(s1.stdout) as { phase: string; current: string; next: string };
  assert.deepEqual([started.phase, started.current], ['announce', before]);
  const f = identityFiles(key);
  assert.equal(statSync(f.next).mode & 0o777, 0o600);
  assert.equal(statSync(identityPublicPath(f.next)).mode & 0o777, 0o644);
  // Refused out of order, with a sentence naming the next step.
  const again = await ctl(dataDir, ['keys', 'rotate-identity', 'start']);
  assert.notEqual(again.code, 0);
  assert.match(again.stderr, /already announced.*switch.*abort/);
  assert.equal((await ctl(dataDir, ['keys', 'rotate-identity', 'switch'])).code, 0);
  const r = await ctl(dataDir, ['keys', 'rotate-identity', 'retire']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`retired key .*${before}`));
  const st = await ctl(dataDir, ['keys', 'rotate-identity', 'status']);
  assert.equal(st.code, 0, st.stderr);
  assert.match(st.stdout, /^phase: single$/m);
  assert.match(st.stdout, new RegExp(`^current +${started.next}$`, 'm'));
  assert.match(st.stdout, new RegExp(`^retired +${before} \\(retired .*, succeeded by ${started.next}\\)$`, 'm'));
  assert.equal((await ctl(dataDir, ['keys', 'show'])).stdout.trim(), started.next);
});

test('the next key gets the identity key\'s file checks and its watch', async (t) => {
  const { key, cleanup } = folder();
  t.after(cleanup);
  const f = identityFiles(key);
  const events: SecurityEvent[] = [];
  const w = watchKeyFile(f.next, (e) => events.push(e), { pollMs: 100 });
  t.after(() => w.close());
  startIdentityRotation(key, Date.now());
  await waitUntil(() => events.length > 0, 10_000, 'a next key appearing outside the daemon to be reported');
  chmodSync(f.next, 0o640);
  assert.throws(() => loadIdentityKeySet(key), (e: unknown) => e instanceof IdentityKeyError && e.code === 'KEY_FILE_UNSAFE');
});

test('an interrupted switch is repaired at load; a key added to the log without its successor\'s signature is not trusted', (t) => {
  const { key, cleanup } = folder();
  t.after(cleanup);
  const f = identityFiles(key);
  const started = startIdentityRotation(key, Date.now());
  // The crash window of switch: previous linked, next not renamed yet.
  linkSync(f.current, f.previous);
  const set = loadIdentityKeySet(key);
  assert.equal(set.phase, 'announce');
  assert.equal(existsSync(f.previous), false);
  const sw = switchIdentity(key, Date.now());
  assert.equal(sw.current, started.next);
  assert.deepEqual(trustedIdentityKeys(key).map((k) => k.role).sort(), ['current', 'previous']);

  // Someone who can write keys/ but holds no private key adds "intruder -> current": its new
  // signature cannot be made, so the intruder is not trusted; a valid-looking statement between
  // two foreign keys is not reachable from the current key either.
  const intruder = generateIdentity();
  const other = generateIdentity();
  const genuine = readRotationLog(f.log);
  const forged = { ...signRotation(intruder, other, 1), new: Buffer.from(loadIdentityKeySet(key).current.spki) };
  const foreign = signRotation(intruder, other, 2);
  const doc = JSON.parse(readFileSync(f.log, 'utf8')) as { rotations: unknown[] };
  const enc = (r: RotationStatement) => ({ old: r.old.toString('base64'), new: r.new.toString('base64'), time: r.time, oldSignature: r.oldSignature.toString('base64'), newSignature: r.newSignature.toString('base64') });
  doc.rotations.push(enc(forged), enc(foreign));
  writeFileSync(f.log, JSON.stringify(doc));
  assert.equal(readRotationLog(f.log).length, genuine.length + 2);
  const fps = trustedIdentityKeys(key).map((k) => k.fingerprint);
  assert.ok(!fps.includes(intruder.fingerprint) && !fps.includes(other.fingerprint), 'no key without a verified chain from the current key');
  assert.equal(identityStatus(key).rotations.length, genuine.length, 'status lists only verified rotations');
});

test('review C: statements planted with a retired key (X -> A signed by retired A and a new X) are not trusted and do not crowd the genuine statement out of the notice', () => {
  const { key, cleanup } = folder();
  try {
    const a = loadIdentityKeySet(key).current;
    const t0 = Date.parse('2026-11-01T00:00:00Z');
    startIdentityRotation(key, t0);
    const b = loadIdentityKeySet(key).next!;
    switchIdentity(key, t0 + 1000);
    retireIdentity(key, t0 + 2000);
    const f = identityFiles(key);
    const doc = JSON.parse(readFileSync(f.log, 'utf8')) as { rotations: Array<Record<string, unknown>> };
    const planted = [0, 1, 2, 3, 4].map(() => generateIdentity());
    for (const [i, x] of planted.entries()) {
      // Some dated before the genuine statement, some after: neither may join the chain.
      const s: RotationStatement = signRotation(x, a, i % 2 === 0 ? t0 - 10_000 : t0 + 5000);
      doc.rotations.push({ old: s.old.toString('base64'), new: s.new.toString('base64'), time: s.time, oldSignature: s.oldSignature.toString('base64'), newSignature: s.newSignature.toString('base64') });
    }
    writeFileSync(f.log, JSON.stringify(doc));
    const trusted = trustedIdentityKeys(key);
    assert.deepEqual(trusted.map((k) => [k.fingerprint, k.role]).sort(), [[b.fingerprint, 'current'], [a.fingerprint, 'retired']].sort());
    const set = loadIdentityKeySet(key);
    assert.deepEqual(set.rotations.map((r) => [fingerprintOf(r.old), fingerprintOf(r.new)]), [[a.fingerprint, b.fingerprint]]);
    const notice = parseIdentityNotice(noticeFor(set));
    assert.ok(notice, 'the notice is well-formed');
    assert.deepEqual(notice.rotations.map((r) => [fingerprintOf(r.old), fingerprintOf(r.new)]), [[a.fingerprint, b.fingerprint]], 'only the genuine statement is in the notice');
    // The planted statements verify (so the checks above can fail).
    assert.equal(readRotationLog(f.log).length, 6);
  } finally {
    cleanup();
  }
});

test('review C: one predecessor per key; a second rollover keeps the whole straight chain', () => {
  const { key, cleanup } = folder();
  try {
    const a = loadIdentityKeySet(key).current;
    const t0 = Date.parse('2026-11-01T00:00:00Z');
    startIdentityRotation(key, t0);
    switchIdentity(key, t0 + 1);
    retireIdentity(key, t0 + 2);
    const b = loadIdentityKeySet(key).current;
    // Planted between the rollovers: another predecessor of B, signed by B (then current) and X.
    const x = generateIdentity();
    const f = identityFiles(key);
    const doc = JSON.parse(readFileSync(f.log, 'utf8')) as { rotations: Array<Record<string, unknown>> };
    const s = signRotation(x, b, t0 + 3);
    doc.rotations.push({ old: s.old.toString('base64'), new: s.new.toString('base64'), time: s.time, oldSignature: s.oldSignature.toString('base64'), newSignature: s.newSignature.toString('base64') });
    writeFileSync(f.log, JSON.stringify(doc));
    startIdentityRotation(key, t0 + 4);
    switchIdentity(key, t0 + 5);
    const c = loadIdentityKeySet(key);
    const fps = new Map(trustedIdentityKeys(key).map((k) => [k.fingerprint, k.role]));
    assert.equal(fps.get(c.current.fingerprint), 'current');
    assert.equal(fps.get(b.fingerprint), 'previous');
    assert.equal(fps.get(a.fingerprint), 'retired');
    assert.equal(fps.has(x.fingerprint), false, 'the branch X -> B is not trusted');
    assert.deepEqual(c.rotations.map((r) => fingerprintOf(r.new)), [b.fingerprint, c.current.fingerprint]);
  } finally {
    cleanup();
  }
});
