import { after, before, test } from 'node:test';
import { capturingRandomness } from './helpers/ephemeral.js';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { connect, type Connection } from '../client/connection.js';
import { joinBatch, splitBatch } from '../protocol/batch.js';
import { ClientSession, pinFingerprint } from '../protocol/client-session.js';
import {
  MAX_INFLIGHT_REQUESTS,
  MAX_MESSAGE_LEN_V2,
  MAX_MESSAGES_PER_RECORD,
  RECORD_DATA,
  RECORD_FINISHED,
  RECORD_HEADER_LEN,
  SERVER_HELLO_LEN,
} from '../protocol/constants.js';
import { ProtocolError } from '../protocol/errors.js';
import { parseServerHello } from '../protocol/handshake-messages.js';
import { deriveSessionSecrets } from '../protocol/key-schedule.js';
import { encodeMessage, type Message } from '../protocol/messages.js';
import { RecordSealer } from '../protocol/record-layer.js';
import { ServerSession, type ServerEvent } from '../protocol/server-session.js';
import { concat, testIdentity } from './helpers/pair.js';
import { rawHandshake, startDaemon, waitUntil, type TestDaemon } from './helpers/daemon.js';

/**
 * Issue 13: protocol version 2 (docs/PROTOCOL.md 6.3, 8). Messages of one flush turn share a
 * DATA record, at most MAX_MESSAGES_PER_RECORD per record; large messages keep their own
 * record; malformed batches are refused whole; the in-flight limit applies to every message of
 * a batch as it is read; version 1 and version 2 clients are served side by side.
 */

const ping = (id: number, data?: Uint8Array): Message => ({ kind: 'request', id, command: 'ping', payload: data ? { data } : {}, stream: false });
/** Random bytes as a plain Uint8Array (what the decoder returns). */
const bytes = (n: number) => new Uint8Array(randomBytes(n));

/** Record types and plaintext-free sizes of a byte stream of whole records. */
function recordsOf(wire: Buffer): { type: number; len: number }[] {
  const out: { type: number; len: number }[] = [];
  for (let at = 0; at < wire.length; ) {
    const len = wire.readUInt32BE(at + 1);
    out.push({ type: wire[at]!, len });
    at += RECORD_HEADER_LEN + len;
  }
  return out;
}

/** An in-memory handshake; `forge` seals client records after the client's Finished (seq 1 on). */
function pair(clientMax: 1 | 2 = 2, serverVersions?: number[]) {
  const identity = testIdentity();
  const cap = capturingRandomness();
  const client = new ClientSession({
    acceptServerKey: pinFingerprint(identity.fingerprint),
    maxVersion: clientMax,
    randomness: cap.randomness,
  });
  const server = new ServerSession({ identity, ...(serverVersions ? { versions: serverVersions } : {}) });
  client.start();
  const hello = concat(client.takeOutput());
  server.receive(hello);
  assert.equal(server.nextEvent().type, 'hello');
  const flight = concat(server.takeOutput());
  client.receive(flight);
  assert.equal(client.nextEvent().type, 'established');
  const finished = concat(client.takeOutput());
  server.receive(finished);
  assert.equal(server.nextEvent().type, 'established');
  const sh = parseServerHello(flight.subarray(0, SERVER_HELLO_LEN));
  const secrets = deriveSessionSecrets(cap.shared(sh.share)!, hello, sh.signed, sh.signature);
  const forge = new RecordSealer(secrets.clientToServer);
  forge.seal(RECORD_FINISHED, secrets.clientFinished, []); // seq 0 was the Finished
  return { client, server, forge };
}

function messagesOf(events: ServerEvent[]): Message[] {
  return events.flatMap((e) => (e.type === 'message' ? [e.message] : []));
}

function drainAll(server: ServerSession): ServerEvent[] {
  const out: ServerEvent[] = [];
  for (;;) {
    const e = server.nextEvent();
    if (e.type === 'need-data') return out;
    out.push(e);
    if (e.type === 'error' || e.type === 'closed') return out;
  }
}

test('version 2 is negotiated by default; a version 1 client or server gets version 1', () => {
  assert.equal(pair(2).server.negotiatedVersion, 2);
  assert.equal(pair(2).client.negotiatedVersion, 2);
  assert.equal(pair(1).server.negotiatedVersion, 1);
  assert.equal(pair(2, [1]).client.negotiatedVersion, 1, 'a server that speaks only version 1 still serves a version 2 client');
});

test('version 2: the requests of one turn leave in one record, the server reads them in order', () => {
  const { client, server } = pair();
  const sent = Array.from({ length: 32 }, (_, i) => ping(i + 1, bytes(64)));
  for (const m of sent) client.sendMessage(m);
  const wire = concat(client.takeOutput());
  assert.deepEqual(recordsOf(wire).map((r) => r.type), [RECORD_DATA], '32 requests, one DATA record');
  server.receive(wire);
  assert.deepEqual(messagesOf(drainAll(server)), sent);
});

test('version 2: at most MAX_MESSAGES_PER_RECORD messages per record; a large message keeps its own record, in order', () => {
  const { client, server } = pair();
  const sent: Message[] = Array.from({ length: MAX_MESSAGES_PER_RECORD + 36 }, (_, i) => ping(i + 1));
  const big: Message = { kind: 'chunk', id: 7, data: bytes(60_000) };
  sent.splice(70, 0, big);
  for (const m of sent) client.sendMessage(m);
  const wire = concat(client.takeOutput());
  const recs = recordsOf(wire);
  assert.equal(recs.length, 4, `64 pings | 6 pings | the chunk | 30 pings, got ${recs.length} records`);
  assert.ok(recs[2]!.len > 60_000, 'the chunk has a record of its own');
  server.receive(wire);
  const got = messagesOf(drainAll(server));
  assert.equal(got.length, sent.length);
  assert.deepEqual(got, sent);
});

test('version 1 on a version 2 server: one record per message, as before', () => {
  const { client, server } = pair(1);
  const sent = Array.from({ length: 5 }, (_, i) => ping(i + 1));
  for (const m of sent) client.sendMessage(m);
  const wire = concat(client.takeOutput());
  assert.equal(recordsOf(wire).length, 5);
  server.receive(wire);
  assert.deepEqual(messagesOf(drainAll(server)), sent);
});

test('version 2: the largest message fits one record; one byte more is refused before anything is queued', () => {
  const { client, server } = pair();
  // [0, 1, "ping", {"data": bytes}] around data of this size (a 2-byte length head).
  const envelope = encodeMessage(ping(1, new Uint8Array(60_000))).length - 60_000;
  const fits = ping(1, bytes(MAX_MESSAGE_LEN_V2 - envelope));
  assert.equal(encodeMessage(fits).length, MAX_MESSAGE_LEN_V2);
  client.sendMessage(ping(9));
  assert.throws(() => client.sendMessage(ping(2, bytes(MAX_MESSAGE_LEN_V2 - envelope + 1))), (e: unknown) => e instanceof ProtocolError && e.code === 'RECORD_TOO_LARGE');
  client.sendMessage(fits);
  server.receive(concat(client.takeOutput()));
  assert.deepEqual(messagesOf(drainAll(server)).map((m) => (m.kind === 'request' ? m.id : -1)), [9, 1]);
});

test('version 2: malformed batches are refused whole (protocol error, no message of the record delivered)', () => {
  const good = encodeMessage(ping(1));
  const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
  const cases: [string, Buffer][] = [
    ['an empty DATA record', Buffer.alloc(0)],
    ['a zero length', Buffer.concat([joinBatch([good]), u16(0)])],
    ['a length past the end', Buffer.concat([joinBatch([good]), u16(50), Buffer.from(good)])],
    ['one byte of a length', Buffer.concat([joinBatch([good]), Buffer.from([0])])],
    [`${MAX_MESSAGES_PER_RECORD + 1} messages`, joinBatch(Array.from({ length: MAX_MESSAGES_PER_RECORD + 1 }, (_, i) => encodeMessage(ping(i))))],
    ['a malformed message after a good one', joinBatch([good, Buffer.from([0x84, 0x00, 0x02, 0x64])])],
    ['a version 1 record (bare CBOR)', Buffer.from(good)],
  ];
  for (const [what, plaintext] of cases) {
    const { server, forge } = pair();
    const out: Buffer[] = [];
    forge.seal(RECORD_DATA, plaintext, out);
    server.receive(concat(out));
    const events = drainAll(server);
    assert.equal(messagesOf(events).length, 0, `${what}: nothing delivered`);
    const last = events.at(-1);
    assert.ok(last?.type === 'error' && last.error.code === 'BAD_MESSAGE' && last.error.violationKind === 'protocol', `${what}: ${JSON.stringify(last)}`);
  }
  // Exactly MAX_MESSAGES_PER_RECORD is fine.
  const { server, forge } = pair();
  const out: Buffer[] = [];
  forge.seal(RECORD_DATA, joinBatch(Array.from({ length: MAX_MESSAGES_PER_RECORD }, (_, i) => encodeMessage(ping(i)))), out);
  server.receive(concat(out));
  assert.equal(messagesOf(drainAll(server)).length, MAX_MESSAGES_PER_RECORD);
});

test('splitBatch and joinBatch are inverse on well-formed batches', () => {
  const msgs = [Buffer.from([1]), randomBytes(300), randomBytes(65000)];
  assert.deepEqual(splitBatch(joinBatch(msgs)).map((m) => Buffer.from(m)), msgs);
});

test('version 2: CLOSE seals the messages queued before it first', () => {
  const { client, server } = pair();
  client.sendMessage(ping(1));
  client.close(0);
  server.receive(concat(client.takeOutput()));
  const events = drainAll(server);
  assert.deepEqual(events.map((e) => e.type), ['message', 'closed'], 'the queued request is sealed before the CLOSE');
});

// ---------------------------------------------------------------------------------------------
// Over the daemon.

let td: TestDaemon;
const gates = new Map<string, () => void>();

before(async () => {
  td = await startDaemon();
  td.daemon.dispatcher.register({
    name: 'test.gate2',
    schema: z.object({ tag: z.string() }).strict(),
    handler: (p) => new Promise((resolve) => gates.set(p.tag, () => resolve({ payload: { tag: p.tag } }))),
  });
});

after(async () => {
  await td.stop();
});

async function exercise(c: Connection, label: string): Promise<void> {
  const info = (await c.request('server.info')).payload as { protocolVersion: number };
  assert.equal(info.protocolVersion, 3, `${label}: server.info names the highest version the server speaks`);
  const datas = Array.from({ length: 40 }, () => randomBytes(100));
  const echoes = await Promise.all(datas.map((d) => c.request('ping', { data: d })));
  echoes.forEach((r, i) => assert.deepEqual(Buffer.from((r.payload as { data: Uint8Array }).data), datas[i], `${label}: ping ${i}`));
  const blob = randomBytes(300_000);
  const r = await c.request('diag.echoStream', {}, { upload: blob });
  const back: Buffer[] = [];
  for await (const piece of r.download!) back.push(Buffer.from(piece));
  assert.ok(Buffer.concat(back).equals(blob), `${label}: 300 kB stream echoed`);
}

test('version 1, 2 and 3 clients are served by the same daemon side by side', { timeout: 60000 }, async () => {
  const v1 = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.13.1', maxVersion: 1 });
  const v2 = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.13.2', maxVersion: 2 });
  const v3 = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.13.9' });
  try {
    assert.equal(v1.version, 1);
    assert.equal(v2.version, 2);
    assert.equal(v3.version, 3, 'the SDK offers version 3 by default and the daemon chooses it');
    await Promise.all([exercise(v1, 'v1'), exercise(v2, 'v2'), exercise(v3, 'v3')]);
  } finally {
    await Promise.all([v1.close(), v2.close(), v3.close()]);
  }
  assert.deepEqual(td.violations.filter((v) => v.ip.startsWith('127.0.13.')), []);
});

test('version 2: the in-flight limit applies to each request of a batch as it is read (BUSY past twice the limit, never a violation)', { timeout: 60000 }, async () => {
  const ip = '127.0.13.3';
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: ip, maxVersion: 2 });
  assert.equal(s.session.negotiatedVersion, 2);
  const total = MAX_MESSAGES_PER_RECORD * 3;
  const out: Buffer[] = [];
  s.forge.seal(RECORD_FINISHED, s.clientFinished, []); // the Finished went out as seq 0
  for (let r = 0; r < 3; r++) {
    const batch = Array.from({ length: MAX_MESSAGES_PER_RECORD }, (_, i) => encodeMessage({ kind: 'request', id: r * MAX_MESSAGES_PER_RECORD + i + 1, command: 'test.gate2', payload: { tag: `g${r * MAX_MESSAGES_PER_RECORD + i + 1}` }, stream: false }));
    s.forge.seal(RECORD_DATA, joinBatch(batch), out);
  }
  await s.raw.write(concat(out));
  let maxRunning = 0;
  const answered = new Set<number>();
  const all: Message[] = [];
  const deadline = Date.now() + 30000;
  await waitUntil(() => gates.size >= MAX_INFLIGHT_REQUESTS, 20000, 'the first requests reached the handler');
  while (answered.size < total && Date.now() < deadline && !s.raw.closed) {
    maxRunning = Math.max(maxRunning, gates.size);
    for (const [tag, open] of [...gates]) {
      gates.delete(tag);
      open();
    }
    await s.raw.waitData(50);
    all.push(...s.events().flatMap((e) => (e.type === 'message' ? [e.message] : [])));
    for (const m of all) if (m.kind === 'response' || m.kind === 'error') answered.add(m.id);
  }
  assert.equal(answered.size, total, 'every request got exactly one answer');
  const busy = all.filter((m) => m.kind === 'error' && m.code === 'BUSY').length;
  const ok = all.filter((m) => m.kind === 'response').length;
  assert.equal(busy + ok, total);
  assert.ok(ok >= MAX_INFLIGHT_REQUESTS, `at least ${MAX_INFLIGHT_REQUESTS} served (${ok})`);
  assert.ok(maxRunning <= MAX_INFLIGHT_REQUESTS * 2, `never more than twice the limit running at once (${maxRunning})`);
  s.raw.socket.destroy();
  assert.deepEqual(td.violations.filter((v) => v.ip === ip), []);
});

test(`version 2: a record of ${MAX_MESSAGES_PER_RECORD + 1} messages closes the connection as a protocol violation`, { timeout: 30000 }, async () => {
  const ip = '127.0.13.4';
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: ip, maxVersion: 2 });
  s.forge.seal(RECORD_FINISHED, s.clientFinished, []);
  const out: Buffer[] = [];
  s.forge.seal(RECORD_DATA, joinBatch(Array.from({ length: MAX_MESSAGES_PER_RECORD + 1 }, (_, i) => encodeMessage(ping(i + 1)))), out);
  await s.raw.write(concat(out));
  assert.ok(await s.raw.closedWithin(5000), 'closed');
  const v = await td.waitForViolation((x) => x.ip === ip);
  assert.equal(v.kind, 'protocol');
  const answers = s.events().flatMap((e) => (e.type === 'message' ? [e.message] : []));
  assert.equal(answers.length, 0, 'no request of the refused record was answered');
});

test('version 2: answers queued in a turn still leave when a later record of the same read fails', () => {
  const { client, server, forge } = pair();
  const out: Buffer[] = [];
  forge.seal(RECORD_DATA, joinBatch([encodeMessage(ping(1))]), out);
  forge.seal(RECORD_DATA, Buffer.alloc(0), out); // an empty batch: refused
  server.receive(concat(out));
  const first = server.nextEvent();
  assert.equal(first.type, 'message');
  server.sendMessage({ kind: 'response', id: 1, payload: { time: 1 }, stream: false });
  assert.equal(server.nextEvent().type, 'error');
  client.receive(concat(server.takeOutput()));
  const got = client.nextEvent();
  assert.ok(got.type === 'message' && got.message.kind === 'response' && got.message.id === 1, 'the answer sealed before the failure reaches the client');
});
