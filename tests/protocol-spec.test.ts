import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { DEFAULT_BAN_POLICY, VIOLATION_KINDS, formatDuration } from '../daemon/bans/ban-policy.js';
import { connect } from '../client/connection.js';
import { RemoteError } from '../client/errors.js';
import { CLIENT_HELLO_LEN, RECORD_DATA, INITIAL_STREAM_WINDOW, MAX_CHUNK_LEN, MAX_CBOR_DEPTH, MAX_INFLIGHT_REQUESTS, MAX_STREAM_WINDOW } from '../protocol/constants.js';
import { ClientSession } from '../protocol/client-session.js';
import type { Message } from '../protocol/messages.js';
import { rawHandshake, RawSocket, startDaemon, waitUntil, type RawSession, type TestDaemon } from './helpers/daemon.js';

/**
 * Issue 15: a client that follows docs/PROTOCOL.md to the letter is never banned, and each
 * point where the text and the server disagreed is pinned to the documented behaviour:
 * flow control (partial chunks up to the credit held; the largest CREDIT at any moment), the
 * largest request id, the deepest nesting, the safe number of requests in flight, DUPLICATE_ID,
 * oversized ping data (TOO_LARGE), a client's CLOSE, min_version 0 (Reject code 1), and
 * messages for unknown ids (ignored).
 */
let td: TestDaemon;
const gates = new Map<string, () => void>();
const BLOB = INITIAL_STREAM_WINDOW * 2 + 12345;

before(async () => {
  td = await startDaemon();
  td.daemon.dispatcher.register({
    name: 'test.gate',
    schema: z.object({ tag: z.string() }).strict(),
    handler: (p) => new Promise((resolve) => gates.set(p.tag, () => resolve({ payload: { tag: p.tag } }))),
  });
  td.daemon.dispatcher.register({
    name: 'test.blob',
    schema: z.object({}).strict(),
    handler: async () => ({
      payload: {},
      download: (async function* () {
        // Whole-chunk pieces, as a file reader produces them.
        for (let sent = 0; sent < BLOB; sent += MAX_CHUNK_LEN) yield Buffer.alloc(Math.min(MAX_CHUNK_LEN, BLOB - sent), 7);
      })(),
    }),
  });
});

after(async () => {
  await td.stop();
});

const violationsFrom = (ip: string) => td.violations.filter((v) => v.ip === ip);

function messages(s: RawSession): Message[] {
  return s.events().flatMap((e) => (e.type === 'message' ? [e.message] : []));
}

/** Reads messages until `done(all so far)` holds or `timeoutMs` passes (a bound, not a sleep). */
async function readUntil(s: RawSession, done: (all: Message[]) => boolean, all: Message[] = [], timeoutMs = 10000): Promise<Message[]> {
  const deadline = Date.now() + timeoutMs;
  all.push(...messages(s));
  while (!done(all) && !s.raw.closed && Date.now() < deadline) {
    await s.raw.waitData(50);
    all.push(...messages(s));
  }
  return all;
}

const chunkBytes = (all: Message[], id: number) => all.reduce((n, m) => n + (m.kind === 'chunk' && m.id === id ? m.data.length : 0), 0);

test('flow control: the server sends chunks up to the credit held, so any grant moves a download on; the largest CREDIT is never a violation', { timeout: 60000 }, async () => {
  const ip = '127.0.1.1';
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: ip });
  await s.raw.write(s.seal({ kind: 'request', id: 1, command: 'test.blob', payload: {}, stream: false }));
  // Without any CREDIT the server fills the initial window exactly, ending on a partial chunk.
  let all = await readUntil(s, (a) => chunkBytes(a, 1) >= INITIAL_STREAM_WINDOW);
  assert.equal(chunkBytes(all, 1), INITIAL_STREAM_WINDOW, 'the whole initial window is used, not only whole chunks');
  // A grant smaller than a chunk is used at once.
  await s.raw.write(s.seal({ kind: 'credit', id: 1, bytes: 1000 }));
  all = await readUntil(s, (a) => chunkBytes(a, 1) >= INITIAL_STREAM_WINDOW + 1000, all);
  assert.equal(chunkBytes(all, 1), INITIAL_STREAM_WINDOW + 1000);
  // The largest CREDIT value, while the server still holds credit: capped, not a violation.
  await s.raw.write(s.seal({ kind: 'credit', id: 1, bytes: MAX_STREAM_WINDOW }));
  all = await readUntil(s, (a) => a.some((m) => m.kind === 'end' && m.id === 1), all);
  assert.equal(chunkBytes(all, 1), BLOB);
  assert.ok(all.some((m) => m.kind === 'end' && m.id === 1));
  // A ping still answers: the connection is healthy.
  await s.raw.write(s.seal({ kind: 'request', id: 2, command: 'ping', payload: {}, stream: false }));
  all = await readUntil(s, (a) => a.some((m) => m.kind === 'response' && m.id === 2), all);
  assert.ok(all.some((m) => m.kind === 'response' && m.id === 2));
  s.raw.socket.destroy();
  assert.deepEqual(violationsFrom(ip), []);
});

test('the largest request id and the deepest documented nesting are answered; one level deeper closes the connection', { timeout: 30000 }, async () => {
  const ok = '127.0.1.2';
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: ok });
  const maxId = 2 ** 32 - 1;
  await s.raw.write(s.seal({ kind: 'request', id: maxId, command: 'ping', payload: {}, stream: false }));
  // The message array is level 1 and the payload map level 2: 14 more arrays reach level 16.
  let nested: unknown = 1;
  for (let i = 0; i < MAX_CBOR_DEPTH - 2; i++) nested = [nested];
  await s.raw.write(s.seal({ kind: 'request', id: 5, command: 'ping', payload: { data: nested }, stream: false }));
  const all = await readUntil(s, (a) => a.filter((m) => m.kind === 'response' || m.kind === 'error').length >= 2);
  assert.ok(all.some((m) => m.kind === 'response' && m.id === maxId), 'id 2^32 - 1 is answered');
  const e = all.find((m) => 'id' in m && m.id === 5);
  assert.ok(e && e.kind === 'error' && e.code === 'BAD_REQUEST', 'depth 16 is decoded (the payload is then merely the wrong shape)');
  s.raw.socket.destroy();
  assert.deepEqual(violationsFrom(ok), []);

  const bad = '127.0.1.3';
  const s2 = await rawHandshake(td.port, td.fingerprint, { localAddress: bad });
  await s2.raw.write(s2.seal({ kind: 'request', id: 5, command: 'ping', payload: { data: [nested] }, stream: false }));
  assert.ok(await s2.raw.closedWithin(5000), 'depth 17 closes the connection');
  const v = await td.waitForViolation((x) => x.ip === bad);
  assert.equal(v.kind, 'protocol');
});

test(`${MAX_INFLIGHT_REQUESTS} requests in flight (the documented safe number) all succeed, none BUSY`, { timeout: 60000 }, async () => {
  const ip = '127.0.1.4';
  const c = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: ip });
  try {
    const tags = Array.from({ length: MAX_INFLIGHT_REQUESTS }, (_, i) => `pipe-${i}`);
    const answers = tags.map((tag) => c.request('test.gate', { tag }));
    await waitUntil(() => tags.every((t) => gates.has(t)), 20000, 'all requests reached the handler');
    for (const t of tags) gates.get(t)!();
    const got = await Promise.all(answers);
    assert.deepEqual(got.map((r) => (r.payload as { tag: string }).tag), tags);
  } finally {
    await c.close();
  }
  assert.deepEqual(violationsFrom(ip), []);
});

test('DUPLICATE_ID refers to the second request; the first keeps running and gets its own answer', { timeout: 30000 }, async () => {
  const ip = '127.0.1.5';
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: ip });
  await s.raw.write(s.seal({ kind: 'request', id: 9, command: 'test.gate', payload: { tag: 'dup' }, stream: false }));
  await waitUntil(() => gates.has('dup'), 10000, 'first request running');
  await s.raw.write(s.seal({ kind: 'request', id: 9, command: 'ping', payload: {}, stream: false }));
  let all = await readUntil(s, (a) => a.some((m) => m.kind === 'error'));
  const err = all.find((m) => m.kind === 'error');
  assert.ok(err && err.kind === 'error' && err.id === 9 && err.code === 'DUPLICATE_ID');
  gates.get('dup')!();
  all = await readUntil(s, (a) => a.some((m) => m.kind === 'response'), all);
  const res = all.find((m) => m.kind === 'response');
  assert.ok(res && res.kind === 'response' && res.id === 9);
  assert.deepEqual(res.payload, { tag: 'dup' }, 'the answer of the first request still arrives under id 9');
  s.raw.socket.destroy();
  assert.deepEqual(violationsFrom(ip), []);
});

test('ping data over MAX_CHUNK_LEN is TOO_LARGE; exactly MAX_CHUNK_LEN is echoed', { timeout: 30000 }, async () => {
  const ip = '127.0.1.6';
  const c = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: ip });
  try {
    const echo = (await c.request('ping', { data: new Uint8Array(MAX_CHUNK_LEN) })).payload as { data: Uint8Array };
    assert.equal(echo.data.length, MAX_CHUNK_LEN);
    await assert.rejects(c.request('ping', { data: new Uint8Array(MAX_CHUNK_LEN + 1) }), (e: unknown) => e instanceof RemoteError && e.code === 'TOO_LARGE');
  } finally {
    await c.close();
  }
  assert.deepEqual(violationsFrom(ip), []);
});

test('CREDIT, CANCEL and CHUNK for unknown ids are ignored; a client CLOSE gets the TCP close, no record and no violation', { timeout: 30000 }, async () => {
  const ip = '127.0.1.7';
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: ip });
  await s.raw.write(s.seal({ kind: 'credit', id: 77, bytes: 1000 }));
  await s.raw.write(s.seal({ kind: 'cancel', id: 78 }));
  await s.raw.write(s.seal({ kind: 'chunk', id: 79, data: new Uint8Array(10) }));
  await s.raw.write(s.seal({ kind: 'request', id: 1, command: 'ping', payload: {}, stream: false }));
  const all = await readUntil(s, (a) => a.some((m) => m.kind === 'response' && m.id === 1));
  assert.ok(all.some((m) => m.kind === 'response' && m.id === 1));
  s.session.close(0);
  await s.raw.write(Buffer.concat(s.session.takeOutput()));
  assert.ok(await s.raw.closedWithin(5000), 'the server closes TCP after a client CLOSE');
  assert.equal(s.raw.take().length, 0, 'no record follows a client CLOSE');
  assert.deepEqual(violationsFrom(ip), []);
});

test('min_version 0 gets Reject code 1, like a range without a common version', { timeout: 30000 }, async () => {
  const raw = await RawSocket.open(td.port, '127.0.1.8');
  const session = new ClientSession({ acceptServerKey: () => true });
  session.start();
  const hello = Buffer.concat(session.takeOutput());
  assert.equal(hello.length, CLIENT_HELLO_LEN);
  hello.writeUInt16BE(0, 7);
  await raw.write(hello);
  await raw.closedWithin(5000);
  assert.deepEqual([...raw.take()], [0x7f, 0x00, 0x02, 0x00, 0x01]);
});

test('a whole-number float where an integer is expected is accepted (request id 3.0 as a CBOR float)', { timeout: 30000 }, async () => {
  const ip = '127.0.1.9';
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: ip });
  // The forge sealer starts at the Finished's sequence number: one discarded record moves it to 1.
  s.forge.seal(RECORD_DATA, new Uint8Array([0x80]), []);
  const out: Buffer[] = [];
  // [0, 3.0 (half float 0xf9 0x4200), "ping", {}]
  s.forge.seal(RECORD_DATA, new Uint8Array([0x84, 0x00, 0xf9, 0x42, 0x00, 0x64, ...Buffer.from('ping'), 0xa0]), out);
  await s.raw.write(Buffer.concat(out));
  const all = await readUntil(s, (a) => a.some((m) => m.kind === 'response'));
  assert.ok(all.some((m) => m.kind === 'response' && m.id === 3));
  s.raw.socket.destroy();
  assert.deepEqual(violationsFrom(ip), []);
});

test('PROTOCOL.md section 11 states every violation kind with the default maxRetry and findTime of the code', () => {
  const text = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');
  const section = text.slice(text.indexOf('## 11. What gets an address banned'));
  const documented = new Map<string, string>();
  for (const line of section.split('\n')) {
    const m = /^\| ((?:`[a-z]+`(?:, )?)+) \| (\d+) \/ (\w+) \|/.exec(line);
    if (!m) continue;
    for (const k of m[1]!.match(/[a-z]+/g)!) documented.set(k, `${m[2]} / ${m[3]}`);
  }
  for (const kind of VIOLATION_KINDS) {
    const rule = DEFAULT_BAN_POLICY.kinds[kind as keyof typeof DEFAULT_BAN_POLICY.kinds];
    assert.equal(documented.get(kind), `${rule.maxRetry} / ${formatDuration(rule.findTime)}`, `kind ${kind}`);
  }
  assert.equal(documented.size, VIOLATION_KINDS.length);
  assert.match(section, new RegExp(`\\(${formatDuration(DEFAULT_BAN_POLICY.banTime)}\\)`));
  assert.match(section, new RegExp(`\\(${formatDuration(DEFAULT_BAN_POLICY.maxBanTime)}\\)`));
});
