import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { generateIdentity } from '../crypto/identity.js';
import { ClientSession, pinFingerprint } from '../protocol/client-session.js';
import { ServerSession, SERVER_TRANSITIONS } from '../protocol/server-session.js';
import { CLIENT_TRANSITIONS } from '../protocol/client-session.js';
import { encodeMessage } from '../protocol/messages.js';
import { RECORD_DATA, RECORD_HEADER_LEN, CLIENT_HELLO_LEN } from '../protocol/constants.js';
import { concat, drain, establishedPair, testIdentity } from './helpers/pair.js';

test('handshake succeeds and both sides exchange messages', () => {
  const { client, server, clientEvents, serverEvents } = establishedPair();
  assert.deepEqual(serverEvents.map((e) => e.type), ['hello', 'need-data', 'established', 'need-data']);
  const est = clientEvents.find((e) => e.type === 'established');
  assert.ok(est && est.type === 'established');
  assert.equal(est.fingerprint, testIdentity().fingerprint);
  assert.equal(client.state, 'ESTABLISHED');
  assert.equal(server.state, 'ESTABLISHED');
  client.sendMessage({ kind: 'request', id: 7, command: 'ping', payload: { data: new Uint8Array([1, 2, 3]) }, stream: false });
  server.receive(concat(client.takeOutput()));
  const ev = server.nextEvent();
  assert.equal(ev.type, 'message');
  assert.deepEqual(ev.type === 'message' && ev.message, { kind: 'request', id: 7, command: 'ping', payload: { data: new Uint8Array([1, 2, 3]) }, stream: false });
  server.sendMessage({ kind: 'response', id: 7, payload: 'pong', stream: false });
  client.receive(concat(server.takeOutput()));
  const r = client.nextEvent();
  assert.deepEqual(r.type === 'message' && r.message, { kind: 'response', id: 7, payload: 'pong', stream: false });
});

test('client detects a different server key (man in the middle)', () => {
  const real = testIdentity();
  const mitm = generateIdentity();
  const server = new ServerSession({ identity: mitm });
  const client = new ClientSession({ acceptServerKey: pinFingerprint(real.fingerprint) });
  client.start();
  server.receive(concat(client.takeOutput()));
  drain(server);
  client.receive(concat(server.takeOutput()));
  const ev = client.nextEvent();
  assert.equal(ev.type, 'error');
  assert.equal(ev.type === 'error' && ev.error.code, 'SERVER_KEY_MISMATCH');
  assert.equal(ev.type === 'error' && ev.fingerprint, mitm.fingerprint);
  assert.equal(client.takeOutput().length, 0, 'client sends nothing after a mismatch');
});

test('a man in the middle replaying the real server key with its own share fails the signature', () => {
  const real = testIdentity();
  const server = new ServerSession({ identity: real });
  const client = new ClientSession({ acceptServerKey: pinFingerprint(real.fingerprint) });
  client.start();
  server.receive(concat(client.takeOutput()));
  drain(server);
  const sh = concat(server.takeOutput());
  sh[3 + 2 + 32 + 5]! ^= 0x01; // flip a bit of the server's X25519 share
  client.receive(sh);
  const ev = client.nextEvent();
  assert.equal(ev.type === 'error' && ev.error.code, 'BAD_SIGNATURE');
});

test('a downgraded version range in the ClientHello breaks the signature', () => {
  const real = testIdentity();
  // Lowered: the server signs the range it saw, the client's own transcript differs. Raised: the
  // server picks a version the client never offered, which the client refuses before the signature.
  for (const [offered, rewritten, code] of [[2, 1, 'BAD_SIGNATURE'], [1, 2, 'VERSION_UNSUPPORTED']] as const) {
    const server = new ServerSession({ identity: real });
    const client = new ClientSession({ acceptServerKey: pinFingerprint(real.fingerprint), maxVersion: offered });
    client.start();
    const ch = concat(client.takeOutput());
    const tampered = Buffer.from(ch);
    tampered.writeUInt16BE(rewritten, 9); // max version rewritten by an attacker
    server.receive(tampered);
    drain(server);
    assert.equal(server.negotiatedVersion, rewritten, 'the server answers the range it saw');
    client.receive(concat(server.takeOutput()));
    const ev = client.nextEvent();
    assert.equal(ev.type === 'error' && ev.error.code, code, `max_version ${offered} -> ${rewritten}`);
  }
});

test('a version 2 choice rewritten to 1 in the ServerHello breaks the signature', () => {
  const real = testIdentity();
  const server = new ServerSession({ identity: real });
  const client = new ClientSession({ acceptServerKey: pinFingerprint(real.fingerprint) });
  client.start();
  server.receive(concat(client.takeOutput()));
  drain(server);
  assert.equal(server.negotiatedVersion, 2, 'a version 2 server and client agree on 2');
  const sh = concat(server.takeOutput());
  assert.equal(sh.readUInt16BE(3), 2);
  sh.writeUInt16BE(1, 3);
  client.receive(sh);
  const ev = client.nextEvent();
  assert.equal(ev.type === 'error' && ev.error.code, 'BAD_SIGNATURE');
});

test('no command is accepted before key confirmation', () => {
  const identity = testIdentity();
  const server = new ServerSession({ identity });
  const client = new ClientSession({ acceptServerKey: pinFingerprint(identity.fingerprint) });
  client.start();
  server.receive(concat(client.takeOutput()));
  drain(server);
  client.receive(concat(server.takeOutput()));
  drain(client); // client now holds its Finished in its output
  const out = client.takeOutput();
  // Swap: send a DATA record sealed where the Finished should be.
  const finishedRecord = concat(out);
  const forged = Buffer.from(finishedRecord);
  forged[0] = RECORD_DATA;
  server.receive(forged);
  const ev = server.nextEvent();
  assert.equal(ev.type, 'error');
  assert.ok(ev.type === 'error' && ['UNEXPECTED_RECORD', 'BAD_RECORD_MAC'].includes(ev.error.code));
  assert.equal(server.state, 'FAILED');
  assert.throws(() => server.sendMessage({ kind: 'response', id: 1, payload: null, stream: false }), /not established/);
});

test('a wrong Finished is refused', () => {
  const identity = testIdentity();
  const server = new ServerSession({ identity });
  const client = new ClientSession({ acceptServerKey: pinFingerprint(identity.fingerprint) });
  client.start();
  const ch = concat(client.takeOutput());
  server.receive(ch);
  drain(server);
  // A second server session answers the same hello; its Finished keys differ.
  const other = new ServerSession({ identity });
  other.receive(ch);
  drain(other);
  client.receive(concat(other.takeOutput()));
  drain(client);
  server.receive(concat(client.takeOutput()));
  const ev = server.nextEvent();
  assert.equal(ev.type === 'error' && ev.error.code, 'BAD_RECORD_MAC');
});

test('state tables: every missing edge is an error', () => {
  for (const table of [SERVER_TRANSITIONS, CLIENT_TRANSITIONS]) {
    assert.deepEqual(table.CLOSED, {});
    assert.deepEqual(table.FAILED, {});
  }
  assert.equal(SERVER_TRANSITIONS.AWAIT_CLIENT_FINISHED.data, undefined);
  assert.equal(SERVER_TRANSITIONS.ESTABLISHED.finished, undefined);
  assert.equal(CLIENT_TRANSITIONS.AWAIT_SERVER_FINISHED.data, undefined);
});

test('a second Finished after establishment closes the session', () => {
  const { client, server } = establishedPair();
  // Re-seal a FINISHED by abusing the sealer through a message of the wrong type is not
  // possible from the API, so forge by rewriting the type byte; authentication fails.
  client.sendMessage({ kind: 'end', id: 1 });
  const rec = concat(client.takeOutput());
  rec[0] = 0x01;
  server.receive(rec);
  const ev = server.nextEvent();
  assert.equal(ev.type, 'error');
});

test('ClientHello split into single bytes is still understood', () => {
  const identity = testIdentity();
  const server = new ServerSession({ identity });
  const client = new ClientSession({ acceptServerKey: pinFingerprint(identity.fingerprint) });
  client.start();
  const ch = concat(client.takeOutput());
  assert.equal(ch.length, CLIENT_HELLO_LEN);
  for (let i = 0; i < ch.length - 1; i++) {
    server.receive(ch.subarray(i, i + 1));
    assert.equal(server.nextEvent().type, 'need-data');
  }
  server.receive(ch.subarray(ch.length - 1));
  assert.equal(server.nextEvent().type, 'hello');
  assert.ok(RECORD_HEADER_LEN > 0 && encodeMessage({ kind: 'end', id: 0 }).length > 0);
});

test('ephemeral key generation never deadlocks (40,000 keys and agreements in a child with a deadline)', { timeout: 120000 }, () => {
  // Node 20 deadlocks when a freshly generated key is export()ed while a garbage collection
  // finalises its key-generation job; the old ephemeral() hung within about 30,000 handshakes.
  const mod = new URL('../crypto/handshake-crypto.js', import.meta.url).href;
  const script = `import(${JSON.stringify(mod)}).then(({ systemRandomness, x25519 }) => {
    const peer = systemRandomness.ephemeral();
    for (let i = 0; i < 40000; i++) { const e = systemRandomness.ephemeral(); if (!x25519(e, peer.publicRaw)) process.exit(3); }
    process.exit(0);
  });`;
  const r = spawnSync(process.execPath, ['--max-semi-space-size=1', '-e', script], { timeout: 100000, stdio: 'ignore' });
  assert.equal(r.signal, null, 'the loop finished before its deadline (no deadlock)');
  assert.equal(r.status, 0);
});
