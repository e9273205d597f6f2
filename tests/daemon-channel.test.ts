import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { connect, type Connection } from '../client/connection.js';
import { ClientError, RemoteError } from '../client/errors.js';
import { RECORD_DATA, RECORD_HEADER_LEN, RECORD_KEY_UPDATE } from '../protocol/constants.js';
import { encodeMessage, type Message } from '../protocol/messages.js';
import { rawHandshake, startDaemon, waitUntil, type RawSession, type TestDaemon } from './helpers/daemon.js';

/**
 * The secure channel over real loopback sockets: handshake, pinning, and each attack on the
 * record stream (tamper, replay, reorder, truncate, oversize, data before key confirmation)
 * closing the connection and reporting a violation from the attacker's source address.
 */
let td: TestDaemon;
const gates = new Map<string, () => void>();

before(async () => {
  td = await startDaemon();
  td.daemon.dispatcher.register({
    name: 'test.gate',
    schema: z.object({ tag: z.string() }).strict(),
    handler: (p) => new Promise((resolve) => gates.set(p.tag, () => resolve({ payload: { tag: p.tag } }))),
  });
});

after(async () => {
  await td.stop();
});

const ping = (id: number): Message => ({ kind: 'request', id, command: 'ping', payload: {}, stream: false });

function responses(s: RawSession): Message[] {
  return s.events().flatMap((e) => (e.type === 'message' ? [e.message] : []));
}

/** Collects responses until `n` arrived or the socket closed (bounded wait). */
async function collectResponses(s: RawSession, n: number, timeoutMs = 3000): Promise<Message[]> {
  const got: Message[] = [];
  const deadline = Date.now() + timeoutMs;
  while (got.length < n && !s.raw.closed && Date.now() < deadline) {
    await s.raw.waitData(50);
    got.push(...responses(s));
  }
  got.push(...responses(s));
  return got;
}

async function assertProtocolClose(s: RawSession, ip: string, kind: string, detail?: string): Promise<void> {
  assert.ok(await s.raw.closedWithin(3000), 'the server closes the connection');
  const v = await td.waitForViolation((e) => e.ip === ip && e.kind === kind);
  if (detail) assert.equal(v.detail, detail);
  assert.equal(typeof v.time, 'number');
}

test('handshake succeeds over TCP; ping and server.info answer', { timeout: 30000 }, async () => {
  const c = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.0.20' });
  try {
    assert.equal(c.fingerprint, td.fingerprint);
    const rtt = await c.ping();
    assert.ok(rtt >= 0 && rtt < 5000);
    const info = (await c.request('server.info')).payload as Record<string, unknown>;
    assert.equal(info.fingerprint, td.fingerprint);
    assert.equal(info.protocolVersion, 3);
    assert.equal(c.version, 3, "the SDK speaks version 3 by default");
    assert.ok(Array.isArray(info.commands) && info.commands.includes('ping'));
    const echo = (await c.request('ping', { data: new Uint8Array([1, 2, 3]) })).payload as { data: Uint8Array };
    assert.deepEqual([...echo.data], [1, 2, 3]);
  } finally {
    await c.close();
  }
  assert.equal(td.violations.filter((v) => v.ip === '127.0.0.20').length, 0, 'a good client causes no violation');
});

test('a wrong pinned fingerprint (man in the middle) fails with SERVER_KEY_MISMATCH', { timeout: 30000 }, async () => {
  const wrong = 'ab'.repeat(32);
  await assert.rejects(
    connect({ host: '127.0.0.1', port: td.port, fingerprint: wrong, localAddress: '127.0.0.21' }),
    (e: unknown) => e instanceof ClientError && e.code === 'SERVER_KEY_MISMATCH' && e.message.includes(td.fingerprint),
  );
});

test('a tampered record (one ciphertext bit flipped) closes the connection', { timeout: 30000 }, async () => {
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.22' });
  const rec = s.seal(ping(1));
  rec[RECORD_HEADER_LEN + 3]! ^= 0x01;
  await s.raw.write(rec);
  await assertProtocolClose(s, '127.0.0.22', 'protocol', 'BAD_RECORD_MAC');
  assert.deepEqual(responses(s), [], 'the tampered request got no answer');
});

test('a tampered record header (the header is associated data) closes the connection', { timeout: 30000 }, async () => {
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.23' });
  const rec = s.seal(ping(1));
  rec[0] = RECORD_KEY_UPDATE; // a valid type, but not the one that was sealed
  await s.raw.write(rec);
  await assertProtocolClose(s, '127.0.0.23', 'protocol', 'BAD_RECORD_MAC');
  assert.deepEqual(responses(s), []);
});

test('a replayed record closes the connection and is not executed twice', { timeout: 30000 }, async () => {
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.24' });
  const rec = s.seal(ping(1));
  await s.raw.write(rec);
  const first = await collectResponses(s, 1);
  assert.deepEqual(first.map((m) => [m.kind, 'id' in m ? m.id : -1]), [['response', 1]]);
  await s.raw.write(rec);
  await assertProtocolClose(s, '127.0.0.24', 'protocol', 'BAD_RECORD_MAC');
  assert.deepEqual(responses(s).filter((m) => m.kind === 'response'), [], 'no second answer');
});

test('reordered records (two swapped) close the connection', { timeout: 30000 }, async () => {
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.25' });
  const r1 = s.seal(ping(1));
  const r2 = s.seal(ping(2));
  await s.raw.write(Buffer.concat([r2, r1]));
  await assertProtocolClose(s, '127.0.0.25', 'protocol', 'BAD_RECORD_MAC');
  assert.deepEqual(responses(s).filter((m) => m.kind === 'response'), []);
});

test('a truncated record followed by the next record closes the connection', { timeout: 30000 }, async () => {
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.26' });
  const r1 = s.seal(ping(1));
  const r2 = s.seal(ping(2));
  await s.raw.write(Buffer.concat([r1.subarray(0, r1.length - 7), r2]));
  await assertProtocolClose(s, '127.0.0.26', 'protocol', 'BAD_RECORD_MAC');
  assert.deepEqual(responses(s).filter((m) => m.kind === 'response'), []);
});

test('a truncated record followed by FIN closes the connection as TRUNCATED', { timeout: 30000 }, async () => {
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.27' });
  const r1 = s.seal(ping(1));
  await s.raw.write(r1.subarray(0, r1.length - 7));
  s.raw.socket.end();
  await assertProtocolClose(s, '127.0.0.27', 'protocol', 'TRUNCATED');
  assert.deepEqual(responses(s).filter((m) => m.kind === 'response'), []);
});

test('a record announcing 2^31 bytes closes the connection at once without allocating it', { timeout: 30000 }, async () => {
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.28' });
  global.gc?.();
  const before = process.memoryUsage();
  const head = Buffer.alloc(RECORD_HEADER_LEN);
  head[0] = RECORD_DATA;
  head.writeUInt32BE(2 ** 31, 1);
  await s.raw.write(head);
  // Keep sending body bytes as a real attacker would, until the server hangs up.
  const chunk = Buffer.alloc(64 * 1024, 0x41);
  const cap = 64 * 1024 * 1024;
  let sent = 0;
  while (!s.raw.closed && !s.raw.socket.destroyed && sent < cap) {
    await s.raw.write(chunk);
    sent += chunk.length;
  }
  assert.ok(await s.raw.closedWithin(3000), 'the server closed the connection');
  assert.ok(sent < cap, `closed after ${sent} body bytes, long before 2^31`);
  const v = await td.waitForViolation((e) => e.ip === '127.0.0.28');
  assert.equal(v.kind, 'protocol');
  assert.equal(v.detail, 'RECORD_TOO_LARGE');
  const now = process.memoryUsage();
  assert.ok(now.arrayBuffers - before.arrayBuffers < 64 * 1024 * 1024, `arrayBuffers grew by ${now.arrayBuffers - before.arrayBuffers}`);
  assert.ok(now.rss - before.rss < 256 * 1024 * 1024, `rss grew by ${now.rss - before.rss}`);
});

test('a DATA record sealed in place of the client Finished is refused: no command before key confirmation', { timeout: 30000 }, async () => {
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.29', sendFinished: false });
  // Correctly sealed under the client's traffic key at sequence 0, so it authenticates;
  // the state machine must still refuse it because the Finished has not arrived.
  const out: Buffer[] = [];
  s.forge.seal(RECORD_DATA, encodeMessage(ping(1)), out);
  await s.raw.write(Buffer.concat([...out, s.finishedRecord]));
  await assertProtocolClose(s, '127.0.0.29', 'handshake', 'UNEXPECTED_RECORD');
  assert.deepEqual(responses(s).filter((m) => m.kind === 'response' || m.kind === 'error'), [], 'the ping got no response');
});

test('a client that skips the Finished and sends requests gets no answer', { timeout: 30000 }, async () => {
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.30', sendFinished: false });
  await s.raw.write(s.seal(ping(1))); // sealed at sequence 1: the server expects 0 for the Finished
  await assertProtocolClose(s, '127.0.0.30', 'protocol', 'BAD_RECORD_MAC');
  assert.deepEqual(responses(s).filter((m) => m.kind === 'response'), []);
});

/** Record types in a stream of records (headers walked, bodies skipped). */
function recordTypes(stream: Buffer): number[] {
  const types: number[] = [];
  let o = 0;
  while (o + RECORD_HEADER_LEN <= stream.length) {
    types.push(stream[o]!);
    o += RECORD_HEADER_LEN + stream.readUInt32BE(o + 1);
  }
  assert.equal(o, stream.length, 'the stream ends on a record boundary');
  return types;
}

test('rekey: 100 pings succeed across several KEY_UPDATEs in both directions', { timeout: 30000 }, async () => {
  const rt = await startDaemon({ rekeyAfterRecords: 8 });
  try {
    const c = await connect({ host: '127.0.0.1', port: rt.port, fingerprint: rt.fingerprint, localAddress: '127.0.0.31', rekeyAfterRecords: 8 });
    try {
      for (let i = 0; i < 100; i++) await c.ping(new Uint8Array([i]));
      const many = await Promise.all(Array.from({ length: 40 }, (_, i) => c.request('ping', { data: new Uint8Array([i]) })));
      many.forEach((r, i) => assert.deepEqual([...(r.payload as { data: Uint8Array }).data], [i]));
    } finally {
      await c.close();
    }
    // Count the KEY_UPDATE records on the wire with a raw session.
    const s = await rawHandshake(rt.port, rt.fingerprint, { localAddress: '127.0.0.31', rekeyAfterRecords: 8 });
    const sent: Buffer[] = [];
    for (let i = 1; i <= 30; i++) {
      const rec = s.seal(ping(i));
      sent.push(rec);
      await s.raw.write(rec);
      const deadline = Date.now() + 3000;
      let got: Message[] = [];
      while (got.length === 0 && Date.now() < deadline && !s.raw.closed) {
        await s.raw.waitData(50);
        got = responses(s);
      }
      assert.equal(got.length, 1, `ping ${i} answered`);
      assert.equal(got[0]!.kind, 'response');
    }
    const c2s = recordTypes(Buffer.concat(sent)).filter((t) => t === RECORD_KEY_UPDATE).length;
    const s2c = recordTypes(Buffer.concat(s.wire)).filter((t) => t === RECORD_KEY_UPDATE).length;
    assert.ok(c2s >= 3, `client sent ${c2s} KEY_UPDATEs`);
    assert.ok(s2c >= 3, `server sent ${s2c} KEY_UPDATEs`);
    assert.equal(rt.violations.length, 0);
    s.raw.destroy();
  } finally {
    await rt.stop();
  }
});

test('a client that does not rekey when the key is used up is closed', { timeout: 30000 }, async () => {
  const rt = await startDaemon({ rekeyAfterRecords: 8 });
  try {
    const s = await rawHandshake(rt.port, rt.fingerprint, { localAddress: '127.0.0.32' }); // no client-side limit
    // The Finished was sequence 0; pings 1..6 take sequences 1..6 and are answered.
    const recs = Array.from({ length: 8 }, (_, i) => s.seal(ping(i + 1)));
    await s.raw.write(Buffer.concat(recs.slice(0, 6)));
    const answered = await collectResponses(s, 6);
    assert.deepEqual(answered.map((m) => m.kind), Array(6).fill('response'));
    // Sequence 7 must be a KEY_UPDATE; a DATA record there breaks the per-key limit.
    await s.raw.write(recs[6]!);
    assert.ok(await s.raw.closedWithin(3000));
    const v = await rt.waitForViolation((e) => e.ip === '127.0.0.32');
    assert.equal(v.kind, 'protocol');
    assert.equal(v.detail, 'REKEY_REQUIRED');
    assert.deepEqual(responses(s).filter((m) => m.kind === 'response'), []);
  } finally {
    await rt.stop();
  }
});

test('several requests in flight on one connection resolve out of order, each with its own answer', { timeout: 30000 }, async () => {
  const c: Connection = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.0.33' });
  try {
    const tags = ['a', 'b', 'c', 'd', 'e'];
    const order: string[] = [];
    const pending = tags.map((tag) =>
      c.request('test.gate', { tag }).then((r) => {
        order.push((r.payload as { tag: string }).tag);
        return (r.payload as { tag: string }).tag;
      }),
    );
    const release = ['d', 'b', 'e', 'a', 'c'];
    for (const tag of release) {
      await waitUntil(() => gates.has(tag), 3000, `request ${tag} to reach the handler`);
    }
    // Pings pass the gated requests.
    await c.ping();
    for (const tag of release) {
      const before = order.length;
      gates.get(tag)!();
      gates.delete(tag);
      await waitUntil(() => order.length === before + 1, 3000, `answer to ${tag}`);
    }
    assert.deepEqual(await Promise.all(pending), tags, 'each promise got its own answer');
    assert.deepEqual(order, release, 'answers arrived in the order the handlers finished');
  } finally {
    await c.close();
  }
});

test('malformed payloads and unknown commands get typed errors and the connection stays open', { timeout: 30000 }, async () => {
  const c = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.0.34' });
  const code = async (p: Promise<unknown>) => {
    try {
      await p;
    } catch (e) {
      assert.ok(e instanceof RemoteError, `expected a RemoteError, got ${String(e)}`);
      return e.code;
    }
    return 'resolved';
  };
  try {
    assert.equal(await code(c.request('ping', { data: 'not bytes' })), 'BAD_REQUEST');
    assert.equal(await code(c.request('ping', { extra: 1 })), 'BAD_REQUEST');
    assert.equal(await code(c.request('ping', 42)), 'BAD_REQUEST');
    assert.equal(await code(c.request('ping', { data: new Uint8Array(65025) })), 'TOO_LARGE', 'a size limit (PROTOCOL.md 6.2), issue 15');
    assert.equal(await code(c.request('no.such.command', {})), 'UNKNOWN_COMMAND');
    assert.equal(await code(c.request('ping', {}, { upload: new Uint8Array([1]) })), 'UNEXPECTED_STREAM');
    assert.equal(await code(c.request('diag.echoStream', {})), 'STREAM_REQUIRED');
    // A request too large for one record fails locally and never reaches the server.
    await assert.rejects(c.request('ping', { data: new Uint8Array(70000) }), (e: unknown) => e instanceof ClientError && e.code === 'REQUEST_TOO_LARGE');
    assert.equal(c.closed, false);
    assert.ok((await c.ping()) >= 0, 'the connection still works');
  } finally {
    await c.close();
  }
  // Bad payloads are not violations; the unknown command is one `command` event (counted, and
  // banned only when repeated: issue 11).
  assert.deepEqual(td.violations.filter((v) => v.ip === '127.0.0.34').map((v) => v.kind), ['command']);
});
