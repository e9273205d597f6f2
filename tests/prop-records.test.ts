import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { ClientSession, pinFingerprint, type ClientEvent } from '../protocol/client-session.js';
import {
  CLIENT_HELLO_LEN,
  MAGIC,
  MAX_RECORD_PLAINTEXT,
  MAX_RECORD_SEALED,
  RECORD_CLOSE,
  RECORD_DATA,
  RECORD_FINISHED,
  RECORD_HEADER_LEN,
  RECORD_KEY_UPDATE,
} from '../protocol/constants.js';
import { ProtocolError } from '../protocol/errors.js';
import { directionKeys } from '../protocol/key-schedule.js';
import type { Message } from '../protocol/messages.js';
import { RecordReader, RecordSealer, type OpenedRecord } from '../protocol/record-layer.js';
import { ServerSession, type ServerEvent } from '../protocol/server-session.js';
import { testIdentity } from './helpers/pair.js';

/**
 * Property tests of the frame decoder and the handshake state machines: arbitrary and
 * mutated bytes never throw out of the parser (only ProtocolError from the reader, only an
 * 'error' event from a session), never yield a record or message that was not sent in that
 * position, and never buffer more than one maximal record and its header.
 */
const BUFFER_BOUND = RECORD_HEADER_LEN + MAX_RECORD_SEALED;
const REKEY = 4;
const secret = randomBytes(32);
const keys = () => directionKeys(Buffer.from(secret));

/** Splits `b` at the given fractions, as TCP might. */
function split(b: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((f) => Math.floor(f * b.length)))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    if (p > prev && p < b.length) {
      out.push(b.subarray(prev, p));
      prev = p;
    }
  }
  out.push(b.subarray(prev));
  return out;
}
const cutsArb = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 8 });

/** Drains a reader; returns the records and how it stopped. */
function drainReader(r: RecordReader, chunks: Buffer[]): { records: OpenedRecord[]; error?: ProtocolError } {
  const records: OpenedRecord[] = [];
  for (const c of chunks) {
    r.push(c);
    for (;;) {
      let rec: OpenedRecord | undefined;
      try {
        rec = r.next();
      } catch (e) {
        assert.ok(e instanceof ProtocolError, `only ProtocolError escapes the reader, got ${String(e)}`);
        return { records, error: e };
      }
      if (!rec) break;
      // KEY_UPDATE records come out of the reader for the session's state table; the stream's
      // content is everything else.
      if (rec.type !== RECORD_KEY_UPDATE) records.push(rec);
    }
    assert.ok(r.bufferedBytes < BUFFER_BOUND, `reader holds ${r.bufferedBytes} bytes while waiting`);
  }
  return { records };
}

/** First index where `m` differs from `o` (m.length if m is a prefix of o; Infinity if equal). */
function firstDifference(o: Buffer, m: Buffer): number {
  const n = Math.min(o.length, m.length);
  for (let i = 0; i < n; i++) if (o[i] !== m[i]) return i;
  if (m.length === o.length) return Infinity;
  return n;
}

type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'duplicate'; from: number; len: number; to: number }
  | { kind: 'delete'; from: number; len: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'swap'; a: number; b: number };

const frac = fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true });
const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: frac, bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: frac }),
  fc.record({ kind: fc.constant('duplicate' as const), from: frac, len: fc.integer({ min: 1, max: 600 }), to: frac }),
  fc.record({ kind: fc.constant('delete' as const), from: frac, len: fc.integer({ min: 1, max: 600 }) }),
  fc.record({ kind: fc.constant('insert' as const), at: frac, bytes: fc.uint8Array({ minLength: 1, maxLength: 40 }) }),
  fc.record({ kind: fc.constant('swap' as const), a: frac, b: frac }),
);

/** Applies a mutation; `bounds` are record boundaries (for swapping whole records). */
function mutate(o: Buffer, m: Mutation, bounds: number[]): Buffer {
  const at = (f: number) => Math.floor(f * o.length);
  switch (m.kind) {
    case 'flip': {
      const b = Buffer.from(o);
      b[at(m.at)]! ^= 1 << m.bit;
      return b;
    }
    case 'truncate':
      return o.subarray(0, at(m.at));
    case 'duplicate': {
      const from = at(m.from);
      const piece = o.subarray(from, Math.min(o.length, from + m.len));
      const to = at(m.to);
      return Buffer.concat([o.subarray(0, to), piece, o.subarray(to)]);
    }
    case 'delete': {
      const from = at(m.from);
      return Buffer.concat([o.subarray(0, from), o.subarray(Math.min(o.length, from + m.len))]);
    }
    case 'insert':
      return Buffer.concat([o.subarray(0, at(m.at)), m.bytes, o.subarray(at(m.at))]);
    case 'swap': {
      // Swap two whole records (replay-free reordering).
      const starts = [0, ...bounds.slice(0, -1)];
      const i = Math.floor(m.a * starts.length);
      const j = Math.floor(m.b * starts.length);
      if (i === j) return Buffer.from(o);
      const [x, y] = i < j ? [i, j] : [j, i];
      const rec = (k: number) => o.subarray(starts[k]!, bounds[k]!);
      return Buffer.concat([o.subarray(0, starts[x]!), rec(y), o.subarray(bounds[x]!, starts[y]!), rec(x), o.subarray(bounds[y]!)]);
    }
  }
}

const recordArb = fc.record({
  type: fc.constantFrom(RECORD_DATA, RECORD_DATA, RECORD_FINISHED, RECORD_CLOSE),
  size: fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 0, max: 300 }) }, { weight: 1, arbitrary: fc.constantFrom(0, MAX_RECORD_PLAINTEXT) }),
  fill: fc.integer({ min: 0, max: 255 }),
});

/** Seals records; returns the stream, the records, each record's end offset, and all boundaries. */
function sealStream(specs: { type: number; size: number; fill: number }[]) {
  const sealer = new RecordSealer(keys(), REKEY);
  const parts: Buffer[] = [];
  const records: OpenedRecord[] = [];
  const ends: number[] = [];
  const bounds: number[] = [];
  let len = 0;
  for (const s of specs) {
    const plaintext = Buffer.alloc(s.size, s.fill);
    const out: Buffer[] = [];
    sealer.seal(s.type, plaintext, out);
    for (const rec of out) {
      len += rec.length;
      bounds.push(len);
    }
    parts.push(...out);
    records.push({ type: s.type, plaintext });
    ends.push(len);
  }
  return { stream: Buffer.concat(parts), records, ends, bounds };
}

test('record reader: arbitrary bytes throw only ProtocolError and never buffer past one record', { timeout: 30000 }, () => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 10 }), (chunks) => {
      drainReader(new RecordReader(keys(), REKEY), chunks.map((c) => Buffer.from(c)));
    }),
    { numRuns: 300 },
  );
});

test('record reader: headers with any declared length; over the limit is refused from the header alone', { timeout: 30000 }, () => {
  const lenArb = fc.oneof(
    fc.integer({ min: 0, max: MAX_RECORD_SEALED }),
    fc.integer({ min: MAX_RECORD_SEALED + 1, max: 2 ** 32 - 1 }),
    fc.constantFrom(0, 15, 16, MAX_RECORD_SEALED, MAX_RECORD_SEALED + 1, 2 ** 31, 2 ** 32 - 1),
  );
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 255 }), lenArb, fc.integer({ min: 0, max: 2 * MAX_RECORD_SEALED }), cutsArb, (type, len, bodyLen, cuts) => {
      const head = Buffer.alloc(RECORD_HEADER_LEN);
      head[0] = type;
      head.writeUInt32BE(len, 1);
      const r = new RecordReader(keys(), REKEY);
      r.push(head);
      let headerVerdict: unknown;
      try {
        headerVerdict = r.next();
      } catch (e) {
        headerVerdict = e;
      }
      const validType = type >= RECORD_FINISHED && type <= RECORD_CLOSE;
      if (!validType) assert.ok(headerVerdict instanceof ProtocolError && headerVerdict.code === 'BAD_RECORD_TYPE');
      else if (len > MAX_RECORD_SEALED) assert.ok(headerVerdict instanceof ProtocolError && headerVerdict.code === 'RECORD_TOO_LARGE', 'refused before any body byte');
      else if (len < 16) assert.ok(headerVerdict instanceof ProtocolError && headerVerdict.code === 'RECORD_TOO_SHORT');
      else assert.equal(headerVerdict, undefined, 'a plausible header waits for its body');
      if (headerVerdict !== undefined) return;
      const { records } = drainReader(r, split(Buffer.alloc(bodyLen, 0x5a), cuts));
      assert.equal(records.length, 0, 'a forged body never authenticates');
    }),
    { numRuns: 200 },
  );
});

test('record reader: a valid stream (with KEY_UPDATEs) is read whole, however it is split', { timeout: 30000 }, () => {
  fc.assert(
    fc.property(fc.array(recordArb, { minLength: 1, maxLength: 12 }), cutsArb, (specs, cuts) => {
      const { stream, records } = sealStream(specs);
      const r = new RecordReader(keys(), REKEY);
      const got = drainReader(r, split(stream, cuts));
      assert.equal(got.error, undefined);
      assert.deepEqual(got.records, records);
      assert.equal(r.bufferedBytes, 0);
    }),
    { numRuns: 150 },
  );
});

test('record reader: mutated streams (flip, truncate, duplicate, delete, insert, reorder) yield only the untouched prefix', { timeout: 30000 }, () => {
  fc.assert(
    fc.property(fc.array(recordArb, { minLength: 1, maxLength: 10 }), mutationArb, cutsArb, (specs, mutation, cuts) => {
      const { stream, records, ends, bounds } = sealStream(specs);
      const mutated = mutate(stream, mutation, bounds);
      const d = firstDifference(stream, mutated);
      const allowed = ends.filter((e) => e <= d).length;
      const got = drainReader(new RecordReader(keys(), REKEY), split(mutated, cuts));
      assert.ok(got.records.length <= allowed, `${got.records.length} records read, only ${allowed} precede the first changed byte`);
      assert.deepEqual(got.records, records.slice(0, got.records.length), 'every record read is the one sent in that place');
      if (d === Infinity) assert.equal(got.records.length, records.length);
      // Records that end before a change are read unless an earlier error stopped the reader.
      if (!got.error) assert.equal(got.records.length, allowed);
    }),
    { numRuns: 400 },
  );
});

// ---------------------------------------------------------------------------------------------
// Sessions.

const SERVER_EVENT_TYPES = new Set(['need-data', 'hello', 'established', 'message', 'closed', 'error']);

/** Feeds chunks to a server session; checks every event and the buffering bound. */
function feedServer(server: ServerSession, chunks: Buffer[]): ServerEvent[] {
  const events: ServerEvent[] = [];
  outer: for (const c of chunks) {
    server.receive(c);
    for (let i = 0; i < 10000; i++) {
      let ev: ServerEvent;
      try {
        ev = server.nextEvent();
      } catch (e) {
        assert.fail(`nextEvent threw ${String(e)}`);
      }
      assert.ok(SERVER_EVENT_TYPES.has(ev.type), `unknown event ${ev.type}`);
      if (ev.type === 'need-data') {
        const bound = server.state === 'AWAIT_CLIENT_HELLO' ? CLIENT_HELLO_LEN : BUFFER_BOUND;
        assert.ok(server.bufferedBytes < bound, `session holds ${server.bufferedBytes} bytes in ${server.state}`);
        continue outer;
      }
      events.push(ev);
      if (ev.type === 'error' || ev.type === 'closed') {
        assert.ok(ev.type !== 'error' || ev.error instanceof ProtocolError);
        assert.deepEqual(server.nextEvent(), ev, 'a terminal event stays terminal');
        break outer;
      }
    }
    assert.fail('nextEvent never asked for more data');
  }
  return events;
}

test('server session: arbitrary bytes, magic-prefixed bytes and a real hello followed by junk never throw or establish', { timeout: 30000 }, () => {
  const identity = testIdentity();
  const helloClient = () => {
    const c = new ClientSession({ acceptServerKey: () => true });
    c.start();
    return Buffer.concat(c.takeOutput());
  };
  const junk = fc.uint8Array({ maxLength: 400 }).map((u) => Buffer.from(u));
  const input = fc.oneof(
    junk,
    junk.map((j) => Buffer.concat([MAGIC, j])),
    junk.map((j) => Buffer.concat([helloClient(), j])),
    fc.tuple(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 0, max: 2 ** 32 - 1 }), junk).map(([t, len, j]) => {
      const h = Buffer.alloc(RECORD_HEADER_LEN);
      h[0] = t;
      h.writeUInt32BE(len, 1);
      return Buffer.concat([helloClient(), h, j]);
    }),
  );
  fc.assert(
    fc.property(input, cutsArb, (bytes, cuts) => {
      const events = feedServer(new ServerSession({ identity }), split(bytes, cuts));
      assert.ok(!events.some((e) => e.type === 'established' || e.type === 'message'), 'nothing is accepted without the key confirmation');
    }),
    { numRuns: 300 },
  );
});

const payloadArb = fc.oneof(fc.constant(null), fc.integer(), fc.string({ maxLength: 20 }), fc.uint8Array({ maxLength: 64 }));
const clientMessageArb: fc.Arbitrary<Message> = fc.oneof(
  fc.record({ kind: fc.constant('request' as const), id: fc.nat(), command: fc.string({ minLength: 1, maxLength: 20 }), payload: payloadArb, stream: fc.boolean() }),
  fc.record({ kind: fc.constant('chunk' as const), id: fc.nat(), data: fc.uint8Array({ minLength: 1, maxLength: 500 }) }),
  fc.record({ kind: fc.constant('credit' as const), id: fc.nat(), bytes: fc.integer({ min: 1, max: 1 << 20 }) }),
  fc.record({ kind: fc.constant('end' as const), id: fc.nat() }),
);

/**
 * A live handshake; returns the server (awaiting the Finished) and the client's transcript from
 * the Finished on. Version 2 flushes after each group of `groups` messages (one record per
 * group, up to the per-record bound); `ends[k]` is where the record holding message k ends.
 */
function liveTranscript(messages: Message[], close: boolean, version: 1 | 2 = 1, groups: number[] = []) {
  const identity = testIdentity();
  const server = new ServerSession({ identity, rekeyAfterRecords: REKEY });
  const client = new ClientSession({ acceptServerKey: pinFingerprint(identity.fingerprint), rekeyAfterRecords: REKEY, maxVersion: version });
  client.start();
  server.receive(Buffer.concat(client.takeOutput()));
  assert.equal(server.nextEvent().type, 'hello');
  const serverFlight = Buffer.concat(server.takeOutput());
  client.receive(serverFlight);
  assert.equal(client.nextEvent().type, 'established');
  const parts: Buffer[] = [];
  const ends: number[] = [];
  const bounds: number[] = [];
  let len = 0;
  const emit = (count: number) => {
    const out = client.takeOutput();
    for (const rec of out) {
      len += rec.length;
      bounds.push(len);
    }
    parts.push(...out);
    for (let k = 0; k < count; k++) ends.push(len);
  };
  emit(1); // the Finished
  let g = 0;
  for (let i = 0; i < messages.length; ) {
    const n = version === 1 ? 1 : Math.max(1, Math.min(groups[g++] ?? 1, messages.length - i));
    for (let k = 0; k < n; k++) client.sendMessage(messages[i + k]!);
    emit(n);
    i += n;
  }
  if (close) {
    client.close(0);
    emit(1);
  }
  return { server, transcript: Buffer.concat(parts), ends, bounds, serverFlight };
}

for (const version of [1, 2] as const) {
  test(`server session, version ${version}: a mutated client transcript delivers only the messages sent before the first changed byte`, { timeout: 30000 }, () => {
    fc.assert(
      fc.property(
        fc.array(clientMessageArb, { maxLength: version === 1 ? 8 : 20 }),
        fc.array(fc.integer({ min: 1, max: 8 }), { maxLength: 20 }),
        fc.boolean(),
        mutationArb,
        cutsArb,
        (messages, groups, close, mutation, cuts) => {
          const { server, transcript, ends, bounds } = liveTranscript(messages, close, version, groups);
          const mutated = mutate(transcript, mutation, bounds);
          const d = firstDifference(transcript, mutated);
          const events = feedServer(server, split(mutated, cuts));
          const established = events.some((e) => e.type === 'established');
          if (established) assert.ok(ends[0]! <= d, 'established only with the intact Finished');
          const delivered = events.flatMap((e) => (e.type === 'message' ? [e.message] : []));
          const allowed = ends.slice(1, 1 + messages.length).filter((e) => e <= d).length;
          assert.ok(delivered.length <= allowed, `${delivered.length} messages delivered, ${allowed} precede the change`);
          assert.deepEqual(
            delivered.map((m) => JSON.stringify(m, (_k, v: unknown) => (v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v))),
            messages.slice(0, delivered.length).map((m) => JSON.stringify(m, (_k, v: unknown) => (v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v))),
          );
          if (d === Infinity) {
            assert.equal(delivered.length, messages.length);
            assert.ok(!events.some((e) => e.type === 'error'), 'the intact transcript raises no error');
            if (close) assert.equal(events.at(-1)?.type, 'closed');
          }
        },
      ),
      { numRuns: 250 },
    );
  });
}

test('version 2: batched records hold the per-record bound and rekey like single ones, however the messages are grouped', { timeout: 30000 }, () => {
  fc.assert(
    fc.property(fc.array(clientMessageArb, { minLength: 1, maxLength: 150 }), fc.array(fc.integer({ min: 1, max: 150 }), { maxLength: 10 }), cutsArb, (messages, groups, cuts) => {
      const { server, transcript } = liveTranscript(messages, false, 2, groups);
      // The server refuses a record over MAX_MESSAGES_PER_RECORD messages, so no error means the bound held.
      const events = feedServer(server, split(transcript, cuts));
      const delivered = events.flatMap((e) => (e.type === 'message' ? [e.message] : []));
      assert.equal(delivered.length, messages.length);
      assert.ok(!events.some((e) => e.type === 'error'));
    }),
    { numRuns: 100 },
  );
});

test('client session: a mutated server flight never establishes unless hello and Finished are intact, and never throws', { timeout: 30000 }, () => {
  const identity = testIdentity();
  fc.assert(
    fc.property(mutationArb, cutsArb, fc.uint8Array({ maxLength: 200 }), (mutation, cuts, tail) => {
      const server = new ServerSession({ identity });
      const client = new ClientSession({ acceptServerKey: pinFingerprint(identity.fingerprint) });
      client.start();
      server.receive(Buffer.concat(client.takeOutput()));
      server.nextEvent();
      const flight = Buffer.concat([...server.takeOutput(), Buffer.from(tail)]);
      const mutated = mutate(flight, mutation, [flight.length - tail.length]);
      const d = firstDifference(flight, mutated);
      let established = false;
      outer: for (const c of split(mutated, cuts)) {
        client.receive(c);
        for (let i = 0; i < 10000; i++) {
          let ev: ClientEvent;
          try {
            ev = client.nextEvent();
          } catch (e) {
            assert.fail(`nextEvent threw ${String(e)}`);
          }
          if (ev.type === 'need-data') continue outer;
          if (ev.type === 'established') established = true;
          if (ev.type === 'error') {
            assert.ok(ev.error instanceof ProtocolError);
            break outer;
          }
          if (ev.type === 'closed') break outer;
        }
      }
      if (established) assert.ok(d >= flight.length - tail.length, 'established only on the intact server flight');
      if (d >= flight.length - tail.length) assert.ok(established, 'the intact flight establishes');
    }),
    { numRuns: 250 },
  );
});

test('a KEY_UPDATE with a body or a record past the per-key limit is refused', () => {
  const out: Buffer[] = [];
  const s = new RecordSealer(keys(), REKEY);
  for (let i = 0; i < REKEY + 2; i++) s.seal(RECORD_DATA, Buffer.from([i]), out);
  const types = [];
  for (const rec of out) types.push(rec[0]);
  assert.equal(types[REKEY - 1], RECORD_KEY_UPDATE, 'the sealer inserts the KEY_UPDATE at the last sequence number');
  // A KEY_UPDATE must be empty.
  const withBody: Buffer[] = [];
  new RecordSealer(keys(), REKEY).seal(RECORD_KEY_UPDATE, Buffer.from([1]), withBody);
  assert.throws(() => drainReaderStrict(new RecordReader(keys(), REKEY), Buffer.concat(withBody)), (e: unknown) => e instanceof ProtocolError && e.code === 'BAD_RECORD_TYPE');
  // A reader with a lower limit than the sender's refuses the sender's DATA in the KEY_UPDATE slot.
  const r = new RecordReader(keys(), 3);
  assert.throws(() => drainReaderStrict(r, Buffer.concat(out)), (e: unknown) => e instanceof ProtocolError && e.code === 'REKEY_REQUIRED');
});

function drainReaderStrict(r: RecordReader, b: Buffer): void {
  r.push(b);
  while (r.next());
}
