import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { connect } from '../client/connection.js';
import { batchBounds, joinBatch, splitBatch } from '../protocol/batch.js';
import { MAX_MESSAGES_PER_RECORD, MAX_RECORD_PLAINTEXT, RECORD_DATA } from '../protocol/constants.js';
import { ProtocolError } from '../protocol/errors.js';
import { directionKeys } from '../protocol/key-schedule.js';
import { decodeMessage, decodeMessageAt, encodeMessage, encodeResponseInto, encodeResponseTransient, type Message } from '../protocol/messages.js';
import { OutputQueue } from '../protocol/output-queue.js';
import { RecordReader, RecordSealer } from '../protocol/record-layer.js';
import { startDaemon } from './helpers/daemon.js';

/**
 * The pipelined request path's shortcuts (issue 13, branch pipe) against the general path they
 * stand in for: a batch's messages decoded in place (decodeMessageAt, batchBounds), a
 * synchronous answer encoded straight into the batch (encodeResponseInto,
 * OutputQueue.sealResponse); the same results, the same bytes, the same errors.
 */

/** The outcome of f: its value, or the code of the ProtocolError it threw (anything else fails). */
function outcome<T>(f: () => T): T | { error: string } {
  try {
    return f();
  } catch (e) {
    assert.ok(e instanceof ProtocolError, `only ProtocolError may escape, got ${String(e)}`);
    return { error: e.code };
  }
}

/** Payload values the fast encoder takes and ones it leaves to cborg (floats, non-ASCII text). */
const payloadArb: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    fc.integer(),
    fc.maxSafeInteger(),
    fc.double({ noNaN: true, noDefaultInfinity: true }),
    fc.string(),
    fc.string({ unit: 'grapheme', maxLength: 8 }),
    fc.boolean(),
    fc.constant(null),
    fc.uint8Array({ maxLength: 80 }).map((b) => new Uint8Array(b)),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(fc.string({ minLength: 1, maxLength: 12 }).filter((k) => k !== '__proto__'), tie('value'), { maxKeys: 5 }),
  ),
})).value;

const messageArb: fc.Arbitrary<Message> = fc.oneof(
  fc.record({ kind: fc.constant('request' as const), id: fc.nat(1000), command: fc.constantFrom('ping', 'persons.get', 'x'), payload: fc.dictionary(fc.string({ minLength: 1, maxLength: 6 }).filter((k) => k !== '__proto__'), payloadArb, { maxKeys: 3 }), stream: fc.boolean() }),
  fc.record({ kind: fc.constant('response' as const), id: fc.nat(1000), payload: payloadArb, stream: fc.boolean() }),
  fc.record({ kind: fc.constant('cancel' as const), id: fc.nat(1000) }),
);

test('decodeMessageAt on a range decodes exactly as decodeMessage on a copy of that range (values and errors)', () => {
  fc.assert(
    fc.property(fc.oneof(messageArb.map((m) => encodeMessage(m)), fc.uint8Array({ maxLength: 40 })), fc.uint8Array({ maxLength: 6 }), fc.uint8Array({ maxLength: 6 }), (msg, before, after) => {
      const whole = Buffer.concat([before, msg, after]);
      const expected = outcome(() => decodeMessage(Buffer.from(msg)));
      assert.deepStrictEqual(outcome(() => decodeMessageAt(whole, before.length, before.length + msg.length)), expected);
    }),
    { numRuns: 400 },
  );
});

test('batchBounds finds the same messages as splitBatch and refuses the same batches', () => {
  const bounds = new Uint32Array(2 * MAX_MESSAGES_PER_RECORD);
  fc.assert(
    fc.property(fc.oneof(fc.array(fc.uint8Array({ minLength: 1, maxLength: 20 }), { minLength: 1, maxLength: MAX_MESSAGES_PER_RECORD + 2 }).map((ms) => joinBatch(ms)), fc.uint8Array({ maxLength: 60 })), (plaintext) => {
      const split = outcome(() => splitBatch(plaintext).map((m) => Buffer.from(m).toString('hex')));
      const found = outcome(() => {
        const n = batchBounds(plaintext, bounds);
        return Array.from({ length: n }, (_, i) => Buffer.from(plaintext.subarray(bounds[2 * i]!, bounds[2 * i + 1]!)).toString('hex'));
      });
      assert.deepStrictEqual(found, split);
    }),
    { numRuns: 400 },
  );
});

test('encodeResponseInto writes the bytes encodeMessage writes for the response, and nothing outside its range', () => {
  fc.assert(
    fc.property(fc.nat(70000), payloadArb, fc.nat(64), fc.nat(300), (id, payload, at, room) => {
      const target = Buffer.alloc(at + room + 16, 0xa5);
      const end = at + room;
      const stop = encodeResponseInto(target, at, end, id, payload);
      const expected = Buffer.from(encodeMessage({ kind: 'response', id, payload, stream: false }));
      const t = encodeResponseTransient(id, payload);
      assert.deepStrictEqual(Buffer.from(t.bytes.subarray(0, t.length)), expected);
      // Outside [at, end) nothing changed, whether it fit or not.
      assert.ok(target.subarray(0, at).every((b) => b === 0xa5));
      assert.ok(target.subarray(end).every((b) => b === 0xa5));
      if (stop >= 0) assert.deepStrictEqual(target.subarray(at, stop), expected);
      // With room to spare and a payload the fast encoder takes, it is written (-1 only otherwise:
      // the encoder wants 16 bytes of headroom before it starts and 9 before each item).
      else assert.ok(expected.length + 16 > room || !fastEncodable(payload), 'refused a payload that fits');
    }),
    { numRuns: 500 },
  );
});

/** What the fast encoder takes: safe integers, ASCII text, bytes, booleans, null, arrays and plain objects of those. */
function fastEncodable(v: unknown): boolean {
  if (typeof v === 'number') return Number.isSafeInteger(v) && !Object.is(v, -0);
  if (typeof v === 'string') return /^[\x00-\x7f]*$/.test(v);
  if (typeof v === 'boolean' || v === null || v instanceof Uint8Array) return true;
  if (Array.isArray(v)) return v.every(fastEncodable);
  if (typeof v === 'object' && v !== null && Object.getPrototypeOf(v) === Object.prototype) return Object.entries(v).every(([k, x]) => fastEncodable(k) && x !== undefined && fastEncodable(x));
  return false;
}

test('OutputQueue.sealResponse seals the same records as sealMessage, batched or not, across batch limits and sealers', () => {
  const secret = randomBytes(32);
  fc.assert(
    fc.property(
      fc.array(fc.record({ id: fc.nat(5000), payload: fc.oneof(payloadArb, fc.uint8Array({ minLength: 3000, maxLength: 5000 }).map((b) => ({ data: new Uint8Array(b) }))), sealer: fc.nat(1) }), { minLength: 1, maxLength: 140 }),
      fc.boolean(),
      (answers, batching) => {
        const run = (fast: boolean): Buffer => {
          const sealers = [new RecordSealer(directionKeys(Buffer.from(secret))), new RecordSealer(directionKeys(Buffer.from(secret)))];
          const q = new OutputQueue();
          q.batching = batching;
          for (const a of answers) {
            const s = sealers[a.sealer]!;
            if (fast) q.sealResponse(s, a.id, a.payload);
            else q.sealMessage(s, { kind: 'response', id: a.id, payload: a.payload, stream: false });
          }
          return Buffer.concat(q.take());
        };
        const general = run(false);
        assert.deepStrictEqual(run(true), general);
        // Each record holds at most MAX_RECORD_PLAINTEXT bytes (the reader opens them all; one
        // reader follows one sealer's record numbers).
        if (answers.some((a) => a.sealer !== 0)) return;
        const reader = new RecordReader(directionKeys(Buffer.from(secret)));
        reader.push(general);
        for (let r = reader.next(); r; r = reader.next()) {
          assert.equal(r.type, RECORD_DATA);
          assert.ok(r.plaintext.length <= MAX_RECORD_PLAINTEXT);
        }
      },
    ),
    { numRuns: 60 },
  );
});

test('over the daemon: pipelined pings are answered in order with their data; a request that outlives the request timeout is answered TIMEOUT', { timeout: 30_000 }, async () => {
  const td = await startDaemon({ limits: { requestTimeoutMs: 300 } });
  const c = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.0.73', requestTimeoutMs: 20_000 });
  try {
    const bodies = Array.from({ length: 100 }, (_, i) => randomBytes(1 + (i % 70)));
    const answers = await Promise.all(bodies.map((data) => c.request('ping', { data })));
    answers.forEach((r, i) => assert.deepEqual(Buffer.from((r.payload as { data: Uint8Array }).data), bodies[i]));
    // An upload that never ends: the echo stream's download waits for it until the server's deadline.
    async function* never(): AsyncIterable<Uint8Array> {
      yield new Uint8Array([1]);
      await new Promise<void>(() => {});
    }
    const res = await c.request('diag.echoStream', {}, { upload: never() });
    await assert.rejects(
      (async () => {
        for await (const _ of res.download!) void _;
      })(),
      (e: unknown) => (e as { code?: string }).code === 'TIMEOUT',
    );
    // The connection still answers afterwards.
    assert.ok(await c.request('ping', {}));
  } finally {
    await c.close();
    await td.stop();
  }
});

test('a payload whose getter throws leaves no empty batch behind', () => {
  const secret = randomBytes(32);
  const sealer = new RecordSealer(directionKeys(Buffer.from(secret)));
  const q = new OutputQueue();
  q.batching = true;
  const bad = {
    get boom(): never {
      throw new Error('getter');
    },
  };
  Object.defineProperty(bad, 'boom', { enumerable: true });
  assert.throws(() => q.sealResponse(sealer, 1, bad), /getter/);
  assert.deepStrictEqual(q.take(), []);
  // The next answer goes out alone, and the reader opens it.
  q.sealResponse(sealer, 2, { ok: true });
  const reader = new RecordReader(directionKeys(Buffer.from(secret)));
  reader.push(Buffer.concat(q.take()));
  const r = reader.next();
  assert.ok(r);
  assert.deepStrictEqual(splitBatch(r.plaintext).map((m) => decodeMessage(m)), [{ kind: 'response', id: 2, payload: { ok: true }, stream: false }]);
});
