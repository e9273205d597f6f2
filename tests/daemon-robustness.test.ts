import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import test from 'node:test';
import winston from 'winston';
import { z } from 'zod';
import { CommandError } from '../daemon/edge/command-errors.js';
import { Dispatcher, describeIssue } from '../daemon/edge/dispatcher.js';
import { findMapConfusion } from '../daemon/edge/payload-shape.js';
import { grantSchema } from '../daemon/club/rights.js';
import type { ClientEvent } from '../protocol/client-session.js';
import { CLIENT_HELLO_BODY_LEN, CLIENT_HELLO_LEN, HS_CLIENT_HELLO, MAGIC, RECORD_DATA, RECORD_FINISHED } from '../protocol/constants.js';
import { ProtocolError } from '../protocol/errors.js';
import { decodeMessage, encodeMessage, type Message } from '../protocol/messages.js';
import { rawHandshake, RawSocket, startDaemon, waitUntil, type RawSession, type TestDaemon } from './helpers/daemon.js';

/**
 * Regression tests for the inputs of issue 18 (a black-box fuzzer's findings), each over real
 * loopback sockets against an in-process daemon: if one of them still took the daemon down, it
 * would take this test process with it.
 */

/** Sends `m` and waits for the answer to its id, or for the connection to end. */
async function ask(rs: RawSession, m: Message, timeoutMs = 10000): Promise<Message | ClientEvent> {
  await rs.raw.write(rs.seal(m));
  const id = (m as { id: number }).id;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const e of rs.events()) {
      if (e.type === 'message' && 'id' in e.message && e.message.id === id) return e.message;
      if (e.type === 'error' || e.type === 'closed') return e;
    }
    if (rs.raw.closed) return { type: 'closed', code: -1 };
    if (Date.now() > deadline) throw new Error(`no answer to request ${id}`);
    await rs.raw.waitData(200);
  }
}

async function pingWorks(td: TestDaemon, localAddress: string): Promise<void> {
  const rs = await rawHandshake(td.port, td.fingerprint, { localAddress });
  const answer = await ask(rs, { kind: 'request', id: 7, command: 'ping', payload: {}, stream: false });
  assert.equal((answer as Message).kind, 'response', `ping from ${localAddress} is served: ${JSON.stringify(answer)}`);
  rs.raw.destroy();
}

function isBadRequest(m: Message | ClientEvent): m is Extract<Message, { kind: 'error' }> {
  return 'kind' in m && m.kind === 'error' && m.code === 'BAD_REQUEST';
}

test('a ping whose payload is a byte string of 8,322 or 60,000 bytes gets a short BAD_REQUEST; the daemon keeps serving', async (t) => {
  const td = await startDaemon();
  t.after(() => td.stop());
  const rs = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.21' });
  for (const [i, n] of [8321, 8322, 60000].entries()) {
    const answer = await ask(rs, { kind: 'request', id: i + 1, command: 'ping', payload: new Uint8Array(n), stream: false });
    assert.ok(isBadRequest(answer), `byte string of ${n}: ${JSON.stringify(answer).slice(0, 300)}`);
    assert.ok(answer.message.length <= 256, `the error text is short (${answer.message.length} characters)`);
    assert.match(answer.message, /map/);
  }
  // The same connection and another client are still served.
  const again = await ask(rs, { kind: 'request', id: 9, command: 'ping', payload: {}, stream: false });
  assert.equal((again as Message).kind, 'response');
  await pingWorks(td, '127.0.0.22');
});

test('an empty byte string is not an empty map: ping, server.info and diag.echoStream refuse it', async (t) => {
  const td = await startDaemon();
  t.after(() => td.stop());
  const rs = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.23' });
  let id = 1;
  for (const [command, stream] of [
    ['ping', false],
    ['server.info', false],
    ['diag.echoStream', true],
  ] as const) {
    const answer = await ask(rs, { kind: 'request', id: id++, command, payload: new Uint8Array(0), stream });
    assert.ok(isBadRequest(answer), `${command}: ${JSON.stringify(answer)}`);
  }
  // Other non-map payloads too: an array, null, text.
  for (const payload of [[], null, 'x', 5]) {
    const answer = await ask(rs, { kind: 'request', id: id++, command: 'ping', payload, stream: false });
    assert.ok(isBadRequest(answer), `payload ${JSON.stringify(payload)}: ${JSON.stringify(answer)}`);
  }
  const ok = await ask(rs, { kind: 'request', id: id++, command: 'server.info', payload: {}, stream: false });
  assert.equal((ok as Message).kind, 'response');
});

test('a byte string where a schema wants a map is refused at every depth, before the schema runs', () => {
  const d = new Dispatcher();
  let ran = 0;
  d.register({
    name: 'test.nested',
    schema: z
      .object({
        opts: z.object({ flag: z.boolean().optional() }).strict().optional(),
        list: z.array(z.object({ a: z.number().optional() }).strict()).optional(),
        tags: z.record(z.string(), z.object({}).strict()).optional(),
        grant: grantSchema.optional(),
      })
      .strict(),
    handler: async () => {
      ran++;
      return { payload: {} };
    },
  });
  const refused = (payload: unknown, where: RegExp): void => {
    assert.throws(
      () => d.prepare('test.nested', payload, false),
      (e: unknown) => e instanceof CommandError && e.code === 'BAD_REQUEST' && where.test(e.message),
      JSON.stringify(payload, (_k, v: unknown) => (v instanceof Uint8Array ? `bytes(${v.length})` : v)),
    );
  };
  refused(new Uint8Array(0), /payload must be a map/);
  refused({ opts: new Uint8Array(0) }, /at opts: expected a map/);
  refused({ list: [{}, new Uint8Array(0)] }, /at list\.1: expected a map/);
  refused({ tags: { x: new Uint8Array(0) } }, /at tags\.x: expected a map/);
  refused({ grant: new Uint8Array(0) }, /at grant/);
  assert.deepEqual(d.prepare('test.nested', { opts: {}, list: [{}], tags: { x: {} } }, false).payload, { opts: {}, list: [{}], tags: { x: {} } });
  assert.equal(ran, 0);
  assert.equal(findMapConfusion(z.object({ b: z.instanceof(Uint8Array) }), { b: new Uint8Array(3) }), undefined, 'bytes where bytes are wanted pass');
});

test('BAD_REQUEST texts are bounded: at most three unknown keys, clipped keys, no control characters', () => {
  const keys = Array.from({ length: 5000 }, (_v, i) => `k${i}`);
  const text = describeIssue({ code: 'unrecognized_keys', keys, path: [], message: 'x'.repeat(70000) });
  assert.ok(text.length <= 256, `${text.length} characters`);
  assert.match(text, /"k0", "k1", "k2" and 4997 more/);
  const long = describeIssue({ code: 'custom', path: ['a'.repeat(5000), 'b'], message: `bad\u0000\u001b[31m${'y'.repeat(5000)}` });
  assert.ok(long.length <= 256);
  assert.doesNotMatch(long, /[\u0000-\u001f]/);
});

test('a KEY_UPDATE before the client FINISHED closes the connection; the FINISHED behind it is never accepted', async (t) => {
  const td = await startDaemon();
  t.after(() => td.stop());
  const rs = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.24', sendFinished: false });
  const out: Buffer[] = [];
  rs.forge.keyUpdate(out);
  rs.forge.seal(RECORD_FINISHED, rs.clientFinished, out);
  rs.session.sendMessage({ kind: 'request', id: 1, command: 'ping', payload: {}, stream: false });
  await rs.raw.write(Buffer.concat(out));
  assert.ok(await rs.raw.closedWithin(10000), 'the server closes the connection');
  const v = await td.waitForViolation((e) => e.ip === '127.0.0.24');
  assert.equal(v.kind, 'handshake');
  assert.equal(v.detail, 'UNEXPECTED_RECORD');
  assert.equal(td.daemon.stats.established, 0, 'the session was never established');
  await pingWorks(td, '127.0.0.25');
});

test('a ClientHello header with a wrong type or length closes the connection before the body (under 75 bytes)', async (t) => {
  const td = await startDaemon();
  t.after(() => td.stop());
  const wrongType = Buffer.concat([MAGIC, Buffer.from([0x02])]);
  const wrongLength = Buffer.concat([MAGIC, Buffer.from([HS_CLIENT_HELLO, 0x00, CLIENT_HELLO_BODY_LEN + 1])]);
  const shortLength = Buffer.concat([MAGIC, Buffer.from([HS_CLIENT_HELLO, 0xff, 0xff])]);
  for (const [i, header] of [wrongType, wrongLength, shortLength].entries()) {
    const ip = `127.0.0.${30 + i}`;
    const raw = await RawSocket.open(td.port, ip);
    await raw.write(header);
    assert.ok(header.length < CLIENT_HELLO_LEN);
    assert.ok(await raw.closedWithin(5000), `header ${header.toString('hex')} closes the connection at once`);
    assert.equal(raw.receivedBytes, 0, 'no ServerHello is sent');
    const v = await td.waitForViolation((e) => e.ip === ip);
    assert.equal(v.kind, 'handshake');
  }
  assert.equal(td.daemon.stats.hellos, 0);
});

test('invalid UTF-8 in a CBOR text string is malformed: the decoder refuses it and the daemon closes the connection', async (t) => {
  // In the codec: a command name and a map key with a lone continuation byte, an overlong "/",
  // and an encoded surrogate.
  for (const bad of [
    '84000164' + '7069ff67' + 'a0', // [0, 1, "pi\xffg", {}]
    '8400016470696e67a1' + '6261c0' + 'f6', // [0, 1, "ping", {"a\xc0": null}]
    '8400016470696e67a1' + '62c0af' + 'f6', // overlong encoding of "/"
    '8400016470696e67a1' + '63eda080' + 'f6', // U+D800 encoded
  ]) {
    assert.throws(
      () => decodeMessage(Buffer.from(bad, 'hex')),
      (e: unknown) => e instanceof ProtocolError && e.code === 'BAD_MESSAGE',
      bad,
    );
  }
  // Valid multi-byte UTF-8 still decodes.
  const ok = decodeMessage(Buffer.from('8400016470696e67a162c3a4f6', 'hex'));
  assert.deepEqual(ok, { kind: 'request', id: 1, command: 'ping', payload: { ä: null }, stream: false });

  const td = await startDaemon();
  t.after(() => td.stop());
  const rs = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.26', sendFinished: false });
  const out: Buffer[] = [];
  rs.forge.seal(RECORD_FINISHED, rs.clientFinished, out);
  rs.forge.seal(RECORD_DATA, Buffer.from('8400016470696e67a16164' + '61ff', 'hex'), out); // {"d": "\xff"}
  await rs.raw.write(Buffer.concat(out));
  assert.ok(await rs.raw.closedWithin(10000), 'the server closes the connection');
  const v = await td.waitForViolation((e) => e.ip === '127.0.0.26');
  assert.equal(v.kind, 'protocol');
  assert.equal(v.detail, 'BAD_MESSAGE');
  const events = rs.events();
  assert.equal(
    events.some((e) => e.type === 'message'),
    false,
    'no typed error is answered to a malformed message',
  );
  await pingWorks(td, '127.0.0.27');
});

test('a handler that throws cannot stop the daemon: the guard logs the address, closes that connection and records a protocol violation', async (t) => {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  const logger = winston.createLogger({ level: 'warn', format: winston.format.json(), transports: [new winston.transports.Stream({ stream: sink })] });
  const td = await startDaemon({ logger });
  t.after(() => td.stop());
  let calls = 0;
  // Registered through the dispatcher's public API: it throws synchronously, out of the
  // connection's own code (the kind of fault that used to end the process).
  td.daemon.dispatcher.register({
    name: 'test.explode',
    schema: z.object({}).strict(),
    handler: (() => {
      calls++;
      throw new TypeError('deliberate failure with a secret: hunter2');
    }) as unknown as () => Promise<{ payload: unknown }>,
  });
  const rs = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.28' });
  await rs.raw.write(rs.seal({ kind: 'request', id: 1, command: 'test.explode', payload: {}, stream: false }));
  assert.ok(await rs.raw.closedWithin(10000), 'the faulty connection is closed');
  assert.equal(calls, 1);
  const v = await td.waitForViolation((e) => e.ip === '127.0.0.28');
  assert.equal(v.kind, 'protocol');
  const events = rs.events();
  const closed = events.find((e) => e.type === 'closed');
  assert.deepEqual(closed, { type: 'closed', code: 3 }, `CLOSE 3 (protocol error) tells the client: ${JSON.stringify(events)}`);
  await waitUntil(() => lines.some((l) => l.message === 'connection handler failed'), 5000, 'the guard log line');
  const line = lines.find((l) => l.message === 'connection handler failed')!;
  assert.equal(line.ip, '127.0.0.28');
  assert.equal(typeof line.port, 'number');
  assert.equal(line.error, 'TypeError');
  assert.doesNotMatch(JSON.stringify(lines), /hunter2/, 'the error message is not logged');
  // The daemon keeps serving, also after several faults in a row.
  for (let i = 0; i < 3; i++) {
    const again = await rawHandshake(td.port, td.fingerprint, { localAddress: `127.0.0.${40 + i}` });
    await again.raw.write(again.seal({ kind: 'request', id: 1, command: 'test.explode', payload: {}, stream: false }));
    assert.ok(await again.raw.closedWithin(10000));
  }
  await pingWorks(td, '127.0.0.29');
  assert.equal(calls, 4);
});

test('found by the fuzzer: payload keys named like Object.prototype members are unknown fields, not a fault', () => {
  const d = new Dispatcher();
  d.register({ name: 'test.obj', schema: z.object({ a: z.object({}).strict().optional() }).strict(), handler: async () => ({ payload: {} }) });
  for (const key of ['constructor', 'toString', 'hasOwnProperty', 'valueOf']) {
    assert.throws(
      () => d.prepare('test.obj', { [key]: {} }, false),
      (e: unknown) => e instanceof CommandError && e.code === 'BAD_REQUEST' && e.message.includes(`"${key}"`),
      key,
    );
    assert.equal(findMapConfusion(z.object({ a: z.object({}) }), { [key]: new Uint8Array(1) }), undefined);
  }
});

test('found by the fuzzer: an undefined value in an answer is never put on the wire (the peer would refuse the message)', () => {
  const wire = encodeMessage({ kind: 'response', id: 3, payload: { items: [], nextOffset: undefined, list: [1, undefined] }, stream: false });
  assert.deepEqual(decodeMessage(wire), { kind: 'response', id: 3, payload: { items: [], list: [1, null] }, stream: false });
});

