// Issue 15 point 4: identity key rollover without stale pins. A pinned client survives a whole
// rotation (start, notice, switch, retire) without a ban or a manual step; a client offline
// through the overlap gets SERVER_KEY_ROTATED (not a ban, not a bare mismatch); change-log heads
// signed by the retired key still verify; a forged identity notice changes no pin.
import { test } from 'node:test';
import { execFile } from 'node:child_process';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type Connection } from '../client/connection.js';
import { ClientError } from '../client/errors.js';
import { lookupKnownServerPins } from '../client/known-servers.js';
import { generateIdentity, signTranscript } from '../crypto/identity.js';
import { identityFiles, trustedIdentityKeys } from '../crypto/identity-keyring.js';
import { rotationMessage, signRotation } from '../crypto/identity-rotation.js';
import { configSchema, dataPaths, loadConfig } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { startServer, type RunningServer } from '../daemon/main/main.js';
import { runOperation } from '../daemon/ops/offline.js';
import { clientProbe } from '../daemon/monitoring/monitor.js';
import { Daemon } from '../daemon/edge/server.js';
import { encodeIdentityNotice } from '../protocol/identity-notice.js';
import { createClub } from '../storage/server/provisioning.js';
import { serverOpenKey } from '../storage/backup/archive-keys.js';
import { archiveTrust, createClubArchive, fileSource, newClubBackupKey, setClubBackupSettings, verifyArchive, writeFileAtomic } from '../storage/backup/backup-archive.js';
import { RawSocket, startDaemon, waitUntil } from './helpers/daemon.js';
import { ClientSession } from '../protocol/client-session.js';
import { SERVER_HELLO_LEN } from '../protocol/constants.js';
import { testIdentity } from './helpers/pair.js';

const PASSWORD = 'chef-password-123';
const BIN = new URL('../bin/', import.meta.url).pathname;

function commusic(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [join(BIN, 'commusic.js'), ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    child.stdin!.end('');
  });
}
const ARCHIVE_PASS = 'correct horse battery staple';

async function start(): Promise<{ server: RunningServer; dir: string; dataDir: string; port: number; club: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-rollover-'));
  const dataDir = join(dir, 'data');
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({ health: { enabled: false } }));
  const server = await startServer(loadConfig({ file, flags: { dataDir, listen: '127.0.0.1:0' } }), { logger: nullLogger(), keyWatchPollMs: 200 });
  const club = (await createClub(server.storage, { name: 'MV Wechsel', adminUser: 'chef', adminPassword: PASSWORD })).id;
  return { server, dir, dataDir, port: server.daemon.address().port, club };
}

/** A few change-log entries and a signed head (logout signs it) under the key in use now. */
async function work(c: Connection, club: string, name: string): Promise<void> {
  await c.request('auth.login', { club, user: 'chef', password: PASSWORD });
  await c.request('inventoryItems.create', { kind: 'instrument', name });
  await c.request('auth.logout');
}

async function step(dataDir: string, s: 'start' | 'switch' | 'retire'): Promise<{ phase: string; current: string; next?: string; previous?: string; retired?: string; sessionsNotified?: number }> {
  const r = await runOperation(dataDir, 'keys.rotate-identity', { step: s });
  assert.equal(r.via, 'daemon', 'the running daemon performs the step');
  return r.result as never;
}

test('a pinned client follows a whole identity rollover without a ban or a manual step; old heads still verify', { timeout: 120_000 }, async (t) => {
  const { server, dir, dataDir, port, club } = await start();
  t.after(async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const known = join(dir, 'known_servers');
  const server127 = `127.0.0.1:${port}`;
  const open = () => connect({ host: '127.0.0.1', port, knownServersFile: known });
  const oldFp = server.identity.fingerprint;

  // A monitor started with the old fingerprint follows the rollover like any pinned client.
  const target = { host: '127.0.0.1', port, fingerprint: server.identity.fingerprint, label: `rollover-${port}` };
  const probeOk = async (when: string) => {
    const r = await clientProbe(target, 10_000);
    assert.equal(r.ok, true, `${when}: ${JSON.stringify(r)}`);
  };
  await probeOk('before');

  // Trust on first use, then work under the old key.
  const first = await open();
  assert.equal(first.fingerprint, oldFp);
  await work(first, club, 'Horn A');
  assert.deepEqual(lookupKnownServerPins(known, server127), [oldFp]);
  // An archive whose origin and change-log heads the old key signs.
  const rec = await newClubBackupKey(ARCHIVE_PASS, { log2N: 12 });
  setClubBackupSettings(server.storage, club, { passphrase: rec });
  const archive = join(dir, 'before-rollover.cmbk');
  await writeFileAtomic(createClubArchive(server.storage, club, { kind: 'club', record: rec }).stream, archive);

  // 1. start: the open session is told at once; the handshake is still signed by the old key.
  const started = await step(dataDir, 'start');
  assert.equal(started.phase, 'announce');
  assert.equal(started.current, oldFp);
  const nextFp = started.next!;
  assert.ok(started.sessionsNotified! >= 1, 'the established session was told');
  const announced = (await runOperation(dataDir, 'status', {})).result as { identityRollover: unknown };
  assert.deepEqual(announced.identityRollover, { phase: 'announce', otherKey: nextFp });
  await waitUntil(() => first.pins.includes(nextFp), 10_000, 'the open session to pin the next key');
  assert.deepEqual([...first.pins].sort(), [oldFp, nextFp].sort());
  assert.deepEqual(lookupKnownServerPins(known, server127).sort(), [oldFp, nextFp].sort(), 'known_servers holds both keys');
  assert.equal(statSync(identityFiles(dataPaths(dataDir).identityKey).next).mode & 0o777, 0o600, 'the next key is stored like the current one');
  await first.close();
  await probeOk('announce');
  const during = await open();
  assert.equal(during.fingerprint, oldFp, 'announce: the current key still signs');
  await during.close();

  // 2. switch: the next key signs; the pinned client connects without any step of its own.
  const switched = await step(dataDir, 'switch');
  assert.equal(switched.phase, 'switched');
  assert.equal(switched.current, nextFp);
  assert.equal(server.identity.fingerprint, nextFp);
  const after = await open();
  assert.equal(after.fingerprint, nextFp, 'switched: the new key signs the handshake');
  await probeOk('switched');
  await work(after, club, 'Horn B');
  await waitUntil(() => after.pins.length === 2, 10_000, 'pins after the switch notice');
  assert.deepEqual([...after.pins].sort(), [oldFp, nextFp].sort(), 'the previous key stays accepted until it retires');

  // 3. retire: the old private key is gone; pins drop it at the next notice.
  const retired = await step(dataDir, 'retire');
  assert.equal(retired.phase, 'single');
  assert.equal(retired.retired, oldFp);
  assert.equal(existsSync(identityFiles(dataPaths(dataDir).identityKey).previous), false, 'the previous private key is deleted');
  await waitUntil(() => after.pins.length === 1, 10_000, 'the open session to drop the retired key');
  assert.deepEqual(after.pins, [nextFp]);
  await after.close();
  const last = await open();
  assert.equal(last.fingerprint, nextFp);
  await probeOk('retired');
  await work(last, club, 'Horn C');
  await last.close();
  assert.deepEqual(lookupKnownServerPins(known, server127), [nextFp], 'known_servers follows: only the new key');

  // Nobody was blamed for anything, and the key-file watch saw only the daemon's own steps.
  assert.equal(server.daemon.stats.violations.size, 0, JSON.stringify([...server.daemon.stats.violations]));
  const status = (await runOperation(dataDir, 'status', {})).result as { keyFileWatch: string; fingerprint: string; identityRollover: unknown };
  assert.equal(status.fingerprint, nextFp);
  assert.equal(status.identityRollover, null, 'no rollover in progress after the retirement');
  assert.equal(status.keyFileWatch, 'ok', 'no key-file alarm for the daemon\'s own rollover');

  // Heads signed by the retired key and by the new key: all verify, online and offline (public files only).
  const heads = server.storage.openClub(club).db.prepare('SELECT DISTINCT fingerprint FROM audit_heads').all() as Array<{ fingerprint: string }>;
  assert.deepEqual(heads.map((h) => h.fingerprint).sort(), [oldFp, nextFp].sort(), 'heads under both keys');
  const v = (await runOperation(dataDir, 'log.verify', { club })).result as { ok: boolean; signedHeads: number; anchors: number; firstBad?: unknown };
  assert.equal(v.ok, true, JSON.stringify(v));
  assert.ok(v.signedHeads >= 3 && v.anchors >= 3, JSON.stringify(v));
  // The archive made before the rollover: origin and heads by the retired key, still verified.
  const rep = await verifyArchive(fileSource(archive), { passphrase: ARCHIVE_PASS, ...serverOpenKey(server.storage), trust: archiveTrust(server.storage) });
  assert.equal(rep.origin.fingerprint, oldFp);
  assert.equal(rep.origin.trustedAs, 'this-server');
  assert.ok(rep.auditChain && rep.auditChain.signedHeads >= 1, JSON.stringify(rep.auditChain));
  const ring = trustedIdentityKeys(dataPaths(dataDir).identityKey);
  assert.deepEqual(ring.map((k) => [k.fingerprint, k.role]), [[nextFp, 'current'], [oldFp, 'retired']]);
  const st = (await runOperation(dataDir, 'keys.identity-status', {})).result as { phase: string; keys: Array<{ fingerprint: string; role: string; successor?: string }> };
  assert.equal(st.phase, 'single');
  assert.deepEqual(st.keys.find((k) => k.role === 'retired'), { fingerprint: oldFp, role: 'retired', retiredAt: st.keys.find((k) => k.role === 'retired')!['retiredAt' as never], successor: nextFp });
});

test('a client offline through the whole overlap gets SERVER_KEY_ROTATED, telling it what to do, and is never banned', { timeout: 120_000 }, async (t) => {
  const { server, dir, dataDir, port } = await start();
  t.after(async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const known = join(dir, 'known_servers');
  const oldFp = server.identity.fingerprint;
  await (await connect({ host: '127.0.0.1', port, knownServersFile: known })).close();
  const stale = join(dir, 'known_servers.offline');
  copyFileSync(known, stale);
  await step(dataDir, 'start');
  const newFp = (await step(dataDir, 'switch')).current;
  await step(dataDir, 'retire');

  // More tries than the handshake rule allows (3 in 10 minutes): none of them counts.
  for (let i = 0; i < 5; i++) {
    const e = await connect({ host: '127.0.0.1', port, knownServersFile: stale, localAddress: '127.0.0.7' }).then(
      () => assert.fail('a client with only the retired key must not connect'),
      (err: unknown) => err,
    );
    assert.ok(e instanceof ClientError, String(e));
    assert.equal(e.code, 'SERVER_KEY_ROTATED', e.message);
    assert.ok(e.message.includes(oldFp) && e.message.includes(newFp), e.message);
    assert.match(e.message, /out of band/);
    assert.match(e.message, /--fingerprint [0-9a-f]{64}/);
  }
  // The member's command line says the same, with the command to run after checking.
  const cli = await commusic(['--server', `127.0.0.1:${port}`, '--tofu', '--known-servers', stale, '--bind', '127.0.0.7', 'ping']);
  assert.notEqual(cli.code, 0);
  assert.match(cli.stderr, /rolled its identity key over.*out of band.*\[SERVER_KEY_ROTATED\]\n$/s);
  assert.ok(cli.stderr.includes(`--fingerprint ${newFp}`), cli.stderr);
  // With an explicit (stale) fingerprint: the same clear message.
  await assert.rejects(connect({ host: '127.0.0.1', port, fingerprint: oldFp, localAddress: '127.0.0.7' }), (e: unknown) => e instanceof ClientError && e.code === 'SERVER_KEY_ROTATED');
  assert.deepEqual(lookupKnownServerPins(stale, `127.0.0.1:${port}`), [oldFp], 'nothing is trusted without the user');
  await waitUntil(() => server.daemon.connectionCount === 0, 10_000, 'the probing sessions to end');
  assert.equal(server.daemon.stats.violations.size, 0, `no violation: ${JSON.stringify([...server.daemon.stats.violations])}`);
  assert.equal(server.banSystem.table.size, 0, 'no ban');

  // The step the message names: after checking the fingerprint, trust it; the file follows.
  const c = await connect({ host: '127.0.0.1', port, knownServersFile: stale, fingerprint: newFp, localAddress: '127.0.0.7' });
  assert.equal(c.fingerprint, newFp);
  await c.close();
  assert.deepEqual(lookupKnownServerPins(stale, `127.0.0.1:${port}`), [newFp]);

  // An unexplained key (no rollover from the pinned key) is still the loud warning.
  const other = join(dir, 'known_servers.other');
  writeFileSync(other, `127.0.0.1:${port} ${generateIdentity().fingerprint}\n`);
  await assert.rejects(connect({ host: '127.0.0.1', port, knownServersFile: other }), (e: unknown) => e instanceof ClientError && e.code === 'SERVER_KEY_CHANGED' && /CHANGED/.test(e.message));
  assert.equal(readFileSync(other, 'utf8').split('\n').filter(Boolean).length, 1);
});

test('a forged identity notice is ignored and changes no pin; a genuine one does', { timeout: 60_000 }, async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'commusic-notice-'));
  const current = testIdentity();
  const next = generateIdentity();
  const attacker = generateIdentity();
  let payload: unknown;
  const daemon = await Daemon.start({ config: configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'error' }), identity: current, logger: nullLogger(), identityNotice: () => payload });
  t.after(async () => {
    await daemon.stop(0);
    rmSync(dataDir, { recursive: true, force: true });
  });
  const port = daemon.address().port;
  const known = join(dataDir, 'known_servers');
  writeFileSync(known, `127.0.0.1:${port} ${current.fingerprint}\n`);
  const genuine = signRotation(current, next, 1_700_000_000_000);
  const forgeries: Record<string, unknown> = {
    'next key vouched for by another key than the current one': encodeIdentityNotice({ current: current.spki, next: attacker.spki, rotations: [{ old: current.spki, new: attacker.spki, time: 7, oldSignature: signTranscript(attacker, rotationMessage(current.spki, attacker.spki, 7)), newSignature: signTranscript(attacker, rotationMessage(current.spki, attacker.spki, 7)) }] }),
    'no proof from the next key': encodeIdentityNotice({ current: current.spki, next: attacker.spki, rotations: [{ ...signRotation(current, attacker, 5), newSignature: genuine.newSignature }] }),
    'a genuine statement with another time': encodeIdentityNotice({ current: current.spki, next: next.spki, rotations: [{ ...genuine, time: genuine.time + 1 }] }),
    'next without a statement linking it': encodeIdentityNotice({ current: current.spki, next: attacker.spki, rotations: [genuine] }),
    'a notice about another key than the session key': encodeIdentityNotice({ current: next.spki, previous: current.spki, rotations: [genuine] }),
    'an extra field': { ...encodeIdentityNotice({ current: current.spki, next: next.spki, rotations: [genuine] }), pins: ['x'] },
  };
  for (const [what, p] of Object.entries(forgeries)) {
    payload = p;
    let changed = false;
    const c = await connect({ host: '127.0.0.1', port, knownServersFile: known, onPinsChanged: () => (changed = true) });
    // A ping answered after the notice: the notice has been handled by then.
    await c.ping();
    assert.equal(changed, false, what);
    assert.deepEqual(c.pins, [current.fingerprint], what);
    await c.close();
    assert.deepEqual(lookupKnownServerPins(known, `127.0.0.1:${port}`), [current.fingerprint], what);
  }
  // The same path with a genuine notice does change the pins (so the checks above can fail).
  payload = encodeIdentityNotice({ current: current.spki, next: next.spki, rotations: [genuine] });
  const c = await connect({ host: '127.0.0.1', port, knownServersFile: known });
  await c.ping();
  assert.deepEqual([...c.pins].sort(), [current.fingerprint, next.fingerprint].sort());
  await c.close();
  assert.deepEqual(lookupKnownServerPins(known, `127.0.0.1:${port}`).sort(), [current.fingerprint, next.fingerprint].sort());
});

test('an aborted rollover: clients that pinned the announced key drop it again', { timeout: 120_000 }, async (t) => {
  const { server, dir, dataDir, port } = await start();
  t.after(async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const known = join(dir, 'known_servers');
  const c = await connect({ host: '127.0.0.1', port, knownServersFile: known });
  const current = c.fingerprint;
  const started = await step(dataDir, 'start');
  await waitUntil(() => c.pins.length === 2, 10_000, 'the next key to be pinned');
  const aborted = (await runOperation(dataDir, 'keys.rotate-identity', { step: 'abort' })).result as { phase: string; current: string };
  assert.deepEqual(aborted, { phase: 'single', current, sessionsNotified: 1 });
  await waitUntil(() => c.pins.length === 1, 10_000, 'the aborted key to be dropped');
  assert.deepEqual(c.pins, [current]);
  await c.close();
  assert.deepEqual(lookupKnownServerPins(known, `127.0.0.1:${port}`), [current]);
  assert.equal(existsSync(identityFiles(dataPaths(dataDir).identityKey).next), false);
  assert.ok(!trustedIdentityKeys(dataPaths(dataDir).identityKey).some((k) => k.fingerprint === started.next), 'the aborted key verifies nothing');
});

test('documented contrast: a client that drops the TCP connection right after the ServerHello commits a handshake violation; one that closes as PROTOCOL.md 3.2 says commits none', { timeout: 60_000 }, async (t) => {
  const td = await startDaemon();
  t.after(() => td.stop());
  const stale = generateIdentity().fingerprint;
  // The SDK: FINISHED, one ping, CLOSE 0.
  await assert.rejects(connect({ host: '127.0.0.1', port: td.port, fingerprint: stale, localAddress: '127.0.0.31' }), (e: unknown) => e instanceof ClientError && e.code === 'SERVER_KEY_MISMATCH');
  await waitUntil(() => td.daemon.connectionCount === 0, 10_000, 'the refused session to end');
  assert.deepEqual(td.violations.filter((v) => v.ip === '127.0.0.31'), []);
  // A bare abort: the ClientHello, the ServerHello read, then a TCP close without a record.
  const raw = await RawSocket.open(td.port, '127.0.0.32');
  const session = new ClientSession({ acceptServerKey: () => false });
  session.start();
  await raw.write(Buffer.concat(session.takeOutput()));
  await waitUntil(() => raw.receivedBytes >= SERVER_HELLO_LEN, 10_000, 'the ServerHello');
  raw.destroy();
  const v = await td.waitForViolation((e) => e.ip === '127.0.0.32', 10_000);
  assert.equal(v.kind, 'handshake');
});
