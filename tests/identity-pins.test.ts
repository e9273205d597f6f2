// Issue 15 review findings A, D, E: an identity notice on a session signed by a key the client
// has seen succeeded rewrites no pin (an old key's holder cannot replace the pin set); a notice
// may not swap an announced next key for another; the legitimate announce, switch, retire and
// abort flows still work; at most MAX_NOTICES_PER_SESSION notices are processed per session;
// known-servers names are canonical (lower case, no trailing dot) and old lines still match.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '../client/connection.js';
import { ClientError } from '../client/errors.js';
import { canonicalServerName, lookupKnownServerPins, lookupSuccessions, setServerPins } from '../client/known-servers.js';
import { generateIdentity, type IdentityKey } from '../crypto/identity.js';
import { signRotation } from '../crypto/identity-rotation.js';
import { configSchema } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { Daemon } from '../daemon/edge/server.js';
import { applyIdentityNotice, encodeIdentityNotice, MAX_NOTICES_PER_SESSION, parseIdentityNotice, type IdentityNotice, type PinState } from '../protocol/identity-notice.js';
import { testIdentity } from './helpers/pair.js';

const A = testIdentity();
const B = generateIdentity();
const X = generateIdentity();
const aToB = signRotation(A, B, 1_700_000_000_000);
const aToX = signRotation(A, X, 1_700_000_500_000);
const announce: IdentityNotice = { current: A.spki, next: B.spki, rotations: [aToB] };
const switched: IdentityNotice = { current: B.spki, previous: A.spki, rotations: [aToB] };
const retired: IdentityNotice = { current: B.spki, rotations: [] };
const abort: IdentityNotice = { current: A.spki, rotations: [] };
const replace: IdentityNotice = { current: A.spki, next: X.spki, rotations: [aToX] };

function after(state: PinState, n: IdentityNotice, key: IdentityKey): PinState {
  return applyIdentityNotice(n, key.spki, state) ?? state;
}
const sorted = (a: readonly string[]) => [...a].sort();

test('A: after the switch, a notice on a session signed by the previous key changes no pin', () => {
  const start: PinState = { pins: [A.fingerprint], successions: [] };
  const announced = after(start, announce, A);
  assert.deepEqual(sorted(announced.pins), sorted([A.fingerprint, B.fingerprint]));
  const sw = after(announced, switched, B);
  assert.deepEqual(sw.successions, [{ old: A.fingerprint, new: B.fingerprint, switched: true }]);
  // The holder of the old key A (an old disk) tries to replace B by X, or to drop B.
  assert.equal(applyIdentityNotice(replace, A.spki, sw), undefined, 'B replaced by X');
  assert.equal(applyIdentityNotice(abort, A.spki, sw), undefined, 'pins shrunk to {A}');
  // Retire on the genuine B session: only B stays, nothing about A is remembered.
  const ret = after(sw, retired, B);
  assert.deepEqual(ret, { pins: [B.fingerprint], successions: [] });
});

test('A: during the announce phase, the announced next key cannot be swapped for another in one notice; abort still drops it', () => {
  const announced = after({ pins: [A.fingerprint], successions: [] }, announce, A);
  assert.equal(applyIdentityNotice(replace, A.spki, announced), undefined, 'next B swapped for X');
  const aborted = after(announced, abort, A);
  assert.deepEqual(aborted, { pins: [A.fingerprint], successions: [] }, 'a legitimate abort');
  // After the abort, a new announcement is accepted.
  const again = after(aborted, replace, A);
  assert.deepEqual(sorted(again.pins), sorted([A.fingerprint, X.fingerprint]));
});

test('A end to end: an old-key holder cannot rewrite the pins of a client that has seen the switch; the real server keeps working after retire', { timeout: 60_000 }, async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'commusic-pins-'));
  let daemon: Daemon | undefined;
  t.after(async () => {
    await daemon?.stop(0);
    rmSync(dataDir, { recursive: true, force: true });
  });
  let port = 0;
  // One address (the same server name for the client), served in turn by A, B and the attacker.
  const serve = async (identity: IdentityKey, n: IdentityNotice) => {
    await daemon?.stop(0);
    daemon = await Daemon.start({ config: configSchema.parse({ dataDir, listen: `127.0.0.1:${port}`, logLevel: 'error' }), identity, logger: nullLogger(), identityNotice: () => encodeIdentityNotice(n) });
    port = daemon.address().port;
  };
  await serve(A, announce);
  const known = join(dataDir, 'known_servers');
  writeFileSync(known, `127.0.0.1:${port} ${A.fingerprint}\n`);
  const visit = async () => {
    const c = await connect({ host: '127.0.0.1', port, knownServersFile: known });
    await c.ping(); // answered after the notice: the notice has been handled
    await c.close();
    return sorted(lookupKnownServerPins(known, `127.0.0.1:${port}`));
  };
  assert.deepEqual(await visit(), sorted([A.fingerprint, B.fingerprint]), 'announce');
  await serve(B, switched);
  assert.deepEqual(await visit(), sorted([A.fingerprint, B.fingerprint]), 'switch');
  const before = readFileSync(known, 'utf8');
  await serve(A, replace);
  assert.deepEqual(await visit(), sorted([A.fingerprint, B.fingerprint]), 'the old-key session may continue, but B stays and X is not pinned');
  await serve(A, abort);
  assert.deepEqual(await visit(), sorted([A.fingerprint, B.fingerprint]), 'B is not dropped');
  assert.equal(readFileSync(known, 'utf8'), before);
  await serve(B, retired);
  assert.deepEqual(await visit(), [B.fingerprint], 'retire');
  await serve(X, { current: X.spki, rotations: [] });
  await assert.rejects(connect({ host: '127.0.0.1', port, knownServersFile: known }), (e: unknown) => e instanceof ClientError && e.code === 'SERVER_KEY_CHANGED');
});

test('D: at most MAX_NOTICES_PER_SESSION identity notices are processed per session', { timeout: 60_000 }, async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'commusic-pins-'));
  const daemon = await Daemon.start({ config: configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'error' }), identity: A, logger: nullLogger(), identityNotice: () => encodeIdentityNotice(announce) });
  t.after(async () => {
    await daemon.stop(0);
    rmSync(dataDir, { recursive: true, force: true });
  });
  const port = daemon.address().port;
  const known = join(dataDir, 'known_servers');
  writeFileSync(known, `127.0.0.1:${port} ${A.fingerprint}\n`);
  const changes: string[][] = [];
  const c = await connect({ host: '127.0.0.1', port, knownServersFile: known, onPinsChanged: (fps) => changes.push(fps) });
  await c.ping();
  assert.equal(changes.length, 1, 'the first notice (sent by the daemon) is applied');
  // The server sends more notices on the same session: the next one counts, any later one is ignored.
  const y = generateIdentity();
  const abortNotice = encodeIdentityNotice(abort);
  const announceY = encodeIdentityNotice({ current: A.spki, next: y.spki, rotations: [signRotation(A, y, 9)] });
  assert.equal(MAX_NOTICES_PER_SESSION, 2);
  daemon.setIdentity(A, abortNotice);
  await c.ping();
  assert.equal(changes.length, 2, 'the second notice is processed');
  daemon.setIdentity(A, announceY);
  await c.ping();
  assert.equal(changes.length, 2, 'the third notice is ignored');
  assert.deepEqual(c.pins, [A.fingerprint]);
  await c.close();
  assert.ok(parseIdentityNotice(announceY), 'the ignored notice is genuine (the check can fail)');
});

test('E: known-servers names are canonical (lower case, no trailing dot); old lines still match', () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-pins-'));
  try {
    assert.equal(canonicalServerName('Club.Example.ORG.:4433'), 'club.example.org:4433');
    assert.equal(canonicalServerName('[FE80::1]:4433'), '[fe80::1]:4433');
    const known = join(dir, 'known_servers');
    // A line written before the rule, with upper case and a trailing dot.
    writeFileSync(known, `Club.Example.ORG.:4433 ${A.fingerprint}\nother.example:1 ${B.fingerprint}\n`);
    assert.deepEqual(lookupKnownServerPins(known, 'club.example.org:4433'), [A.fingerprint]);
    assert.deepEqual(lookupKnownServerPins(known, 'CLUB.example.org.:4433'), [A.fingerprint]);
    setServerPins(known, 'club.EXAMPLE.org:4433', [A.fingerprint, B.fingerprint], [{ old: A.fingerprint, new: B.fingerprint, switched: false }]);
    const text = readFileSync(known, 'utf8');
    assert.ok(!text.includes('Club.Example.ORG.'), 'the old spelling is replaced, not kept beside the new one');
    assert.deepEqual(lookupKnownServerPins(known, 'Club.Example.Org:4433'), [A.fingerprint, B.fingerprint]);
    assert.deepEqual(lookupSuccessions(known, 'club.example.org.:4433'), [{ old: A.fingerprint, new: B.fingerprint, switched: false }]);
    assert.deepEqual(lookupKnownServerPins(known, 'other.example:1'), [B.fingerprint]);
    // A reader of the old format (name, fingerprint) never takes a rotation line for a pin.
    for (const line of text.split('\n').filter((l) => l.startsWith('@rotation'))) assert.notEqual(line.split(/\s+/)[0], 'club.example.org:4433');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('E end to end: a client connecting by an upper-case host name uses the pin of the canonical name', { timeout: 60_000 }, async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'commusic-pins-'));
  const daemon = await Daemon.start({ config: configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'error' }), identity: A, logger: nullLogger() });
  t.after(async () => {
    await daemon.stop(0);
    rmSync(dataDir, { recursive: true, force: true });
  });
  const port = daemon.address().port;
  const known = join(dataDir, 'known_servers');
  // Pinned to another key under the canonical name: the mixed-case name must find it and refuse.
  writeFileSync(known, `localhost:${port} ${B.fingerprint}\n`);
  await assert.rejects(connect({ host: 'LocalHost', port, localAddress: '127.0.0.1', knownServersFile: known }), (e: unknown) => e instanceof ClientError && e.code === 'SERVER_KEY_CHANGED');
  assert.deepEqual(lookupKnownServerPins(known, `localhost:${port}`), [B.fingerprint], 'no second pin under another spelling');
});
