import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { encode } from 'cborg';
import { checkCborShape } from '../protocol/cbor-shape.js';
import { classifyFirstBytes } from '../protocol/classify.js';
import {
  CLIENT_HELLO_BODY_LEN,
  CLIENT_HELLO_LEN,
  HS_CLIENT_HELLO,
  HS_REJECT,
  HS_SERVER_HELLO,
  MAGIC,
  MAX_CBOR_DEPTH,
  RANDOM_LEN,
  REJECT_BODY_LEN,
  SERVER_HELLO_BODY_LEN,
  SERVER_HELLO_LEN,
  SERVER_SIGNATURE_LEN,
  SERVER_SPKI_LEN,
  X25519_PUBLIC_LEN,
} from '../protocol/constants.js';
import { ProtocolError } from '../protocol/errors.js';
import { parseClientHello, parseReject, parseServerHello } from '../protocol/handshake-messages.js';
import { decodeMessage, encodeMessage, encodeMessageTransient, type Message } from '../protocol/messages.js';
import { MSG_RESPONSE } from '../protocol/constants.js';

/**
 * Property tests of the message decoder, the CBOR shape check and the handshake message
 * parsers: arbitrary and mutated input either parses into a well-formed value or raises a
 * ProtocolError; nothing else escapes, and nesting cannot exhaust the stack.
 */
function only<T>(f: () => T, codes: string[]): T | ProtocolError {
  try {
    return f();
  } catch (e) {
    assert.ok(e instanceof ProtocolError, `only ProtocolError may escape, got ${String(e)}`);
    assert.ok(codes.includes(e.code), `unexpected code ${e.code}`);
    return e;
  }
}

const bytesArb = fc.uint8Array({ maxLength: 400 });

const { payload: payloadArb } = fc.letrec<{ payload: unknown }>((tie) => ({
  payload: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.string({ maxLength: 30 }),
    fc.uint8Array({ maxLength: 64 }),
    fc.array(tie('payload'), { maxLength: 4 }),
    fc.dictionary(fc.string({ maxLength: 10 }).filter((k) => k !== '__proto__'), tie('payload'), { maxKeys: 4, noNullPrototype: true }),
  ),
}));

/** Records with Object.prototype, as the decoder produces them. */
const plain = { noNullPrototype: true } as const;
const idArb = fc.integer({ min: 0, max: 0xffffffff });
const messageArb: fc.Arbitrary<Message> = fc.oneof(
  fc.record({ kind: fc.constant('request' as const), id: idArb, command: fc.string({ minLength: 1, maxLength: 64 }), payload: payloadArb, stream: fc.boolean() }, plain),
  fc.record({ kind: fc.constant('response' as const), id: idArb, payload: payloadArb, stream: fc.boolean() }, plain),
  fc.record({ kind: fc.constant('error' as const), id: idArb, code: fc.string({ minLength: 1, maxLength: 64 }), message: fc.string({ maxLength: 100 }) }, plain),
  fc.record({ kind: fc.constant('chunk' as const), id: idArb, data: fc.uint8Array({ minLength: 1, maxLength: 300 }) }, plain),
  fc.record({ kind: fc.constant('end' as const), id: idArb }, plain),
  fc.record({ kind: fc.constant('credit' as const), id: idArb, bytes: fc.integer({ min: 1, max: 16 * 1024 * 1024 }) }, plain),
  fc.record({ kind: fc.constant('cancel' as const), id: idArb }, plain),
  fc.record({ kind: fc.constant('notice' as const), event: fc.string({ minLength: 1, maxLength: 64 }), payload: payloadArb }, plain),
);

test('decodeMessage: arbitrary bytes decode to a message or raise BAD_MESSAGE', { timeout: 30000 }, () => {
  fc.assert(
    fc.property(bytesArb, (b) => {
      only(() => decodeMessage(b), ['BAD_MESSAGE']);
    }),
    { numRuns: 2000 },
  );
});

test('decodeMessage: every message round-trips through encodeMessage', { timeout: 30000 }, () => {
  fc.assert(
    fc.property(messageArb, (m) => {
      assert.deepStrictEqual(decodeMessage(encodeMessage(m)), m);
    }),
    { numRuns: 500 },
  );
});

test('encodeMessageTransient (the sealing path) writes exactly the bytes of encodeMessage, whose fallback is cborg', { timeout: 30000 }, () => {
  fc.assert(
    fc.property(messageArb, (m) => {
      const t = encodeMessageTransient(m);
      const joined = Buffer.concat([t.head, t.tail ?? new Uint8Array(0)]);
      assert.deepStrictEqual(joined, Buffer.from(encodeMessage(m)));
      if (m.kind === 'response' && !m.stream) assert.deepStrictEqual(joined, Buffer.from(encode([MSG_RESPONSE, m.id, m.payload])));
    }),
    { numRuns: 2000 },
  );
});

test('decodeMessage and checkCborShape: mutated valid encodings raise only BAD_MESSAGE', { timeout: 30000 }, () => {
  const mutation = fc.oneof(
    fc.record({ flip: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
    fc.record({ cut: fc.nat() }),
    fc.record({ at: fc.nat(), insert: fc.uint8Array({ minLength: 1, maxLength: 9 }) }),
    fc.record({ from: fc.nat(), len: fc.integer({ min: 1, max: 40 }), to: fc.nat() }),
  );
  fc.assert(
    fc.property(messageArb, mutation, (m, mu) => {
      const o = Buffer.from(encodeMessage(m));
      let b: Buffer;
      if ('flip' in mu) {
        b = Buffer.from(o);
        b[mu.flip % b.length]! ^= 1 << mu.bit;
      } else if ('cut' in mu) b = o.subarray(0, mu.cut % o.length);
      else if ('insert' in mu) b = Buffer.concat([o.subarray(0, mu.at % (o.length + 1)), mu.insert, o.subarray(mu.at % (o.length + 1))]);
      else {
        const from = mu.from % o.length;
        const to = mu.to % (o.length + 1);
        b = Buffer.concat([o.subarray(0, to), o.subarray(from, from + mu.len), o.subarray(to)]);
      }
      only(() => checkCborShape(b, MAX_CBOR_DEPTH), ['BAD_MESSAGE']);
      only(() => decodeMessage(b), ['BAD_MESSAGE']);
    }),
    { numRuns: 1500 },
  );
});

test('checkCborShape: arbitrary bytes pass or raise BAD_MESSAGE; whatever it passes, the decoder survives', { timeout: 30000 }, () => {
  // Biased towards container and string headers with large declared lengths.
  const head = fc.constantFrom(0x9b, 0xbb, 0x5b, 0x7b, 0x9a, 0xba, 0x5a, 0x7a, 0x99, 0x98, 0x81, 0xa1, 0x41, 0x9f, 0xbf, 0x5f, 0xc0, 0xd8, 0xf7, 0xf8, 0xfc);
  const arb = fc.oneof(bytesArb, fc.tuple(head, bytesArb).map(([h, rest]) => Uint8Array.from([h, ...rest])));
  fc.assert(
    fc.property(arb, (b) => {
      const r = only(() => checkCborShape(b, MAX_CBOR_DEPTH), ['BAD_MESSAGE']);
      if (!(r instanceof ProtocolError)) only(() => decodeMessage(b), ['BAD_MESSAGE']);
    }),
    { numRuns: 2000 },
  );
});

test('checkCborShape: nesting far past the limit is refused without recursion', { timeout: 30000 }, () => {
  fc.assert(
    fc.property(fc.integer({ min: MAX_CBOR_DEPTH + 1, max: 200000 }), fc.constantFrom(0x81, 0xa1), (depth, container) => {
      // [[[[...0...]]]] (or {k:{k:...}} with one-byte keys) `depth` levels deep.
      const unit = container === 0x81 ? [0x81] : [0xa1, 0x61, 0x6b];
      const b = new Uint8Array(depth * unit.length + 1);
      for (let i = 0; i < depth; i++) b.set(unit, i * unit.length);
      const r = only(() => checkCborShape(b, MAX_CBOR_DEPTH), ['BAD_MESSAGE']);
      assert.ok(r instanceof ProtocolError && /deeply/.test(r.message));
      assert.ok(only(() => decodeMessage(b), ['BAD_MESSAGE']) instanceof ProtocolError);
    }),
    { numRuns: 30 },
  );
  // The deepest accepted nesting still decodes.
  let v: unknown = 0;
  for (let i = 0; i < MAX_CBOR_DEPTH - 3; i++) v = [v];
  const m = decodeMessage(encode([0, 1, 'ping', v]));
  assert.equal(m.kind, 'request');
});

test('checkCborShape: a declared length past the input is refused before anything is allocated', () => {
  for (const h of [0x5b, 0x7b, 0x9b, 0xbb]) {
    const b = Buffer.from([h, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00]); // 2^36 items/bytes
    const r = only(() => checkCborShape(b, MAX_CBOR_DEPTH), ['BAD_MESSAGE']);
    assert.ok(r instanceof ProtocolError);
  }
});

function clientHelloLike(body: Uint8Array): Uint8Array {
  const b = Buffer.alloc(CLIENT_HELLO_LEN);
  MAGIC.copy(b, 0);
  b[4] = HS_CLIENT_HELLO;
  b.writeUInt16BE(CLIENT_HELLO_BODY_LEN, 5);
  Buffer.from(body).copy(b, 7);
  return b;
}

test('parseClientHello: arbitrary bytes parse into a well-formed hello or raise BAD_HANDSHAKE_MESSAGE (VERSION_UNSUPPORTED for an empty version range)', { timeout: 30000 }, () => {
  const arb = fc.oneof(
    bytesArb,
    fc.uint8Array({ minLength: CLIENT_HELLO_BODY_LEN, maxLength: CLIENT_HELLO_BODY_LEN }).map(clientHelloLike),
    fc.tuple(fc.uint8Array({ minLength: CLIENT_HELLO_BODY_LEN, maxLength: CLIENT_HELLO_BODY_LEN }), fc.nat(), fc.integer({ min: 0, max: 7 })).map(([body, at, bit]) => {
      const b = clientHelloLike(body);
      b[at % 7]! ^= 1 << bit; // a header bit
      return b;
    }),
  );
  fc.assert(
    fc.property(arb, (b) => {
      const r = only(() => parseClientHello(b), ['BAD_HANDSHAKE_MESSAGE', 'VERSION_UNSUPPORTED']);
      if (r instanceof ProtocolError) return;
      assert.equal(b.length, CLIENT_HELLO_LEN);
      assert.ok(r.minVersion >= 1 && r.minVersion <= r.maxVersion && r.maxVersion <= 0xffff);
      assert.equal(r.random.length, RANDOM_LEN);
      assert.equal(r.share.length, X25519_PUBLIC_LEN);
    }),
    { numRuns: 1500 },
  );
});

test('parseServerHello and parseReject: arbitrary bytes parse with exact field sizes or raise BAD_HANDSHAKE_MESSAGE', { timeout: 30000 }, () => {
  const shLike = fc.uint8Array({ minLength: SERVER_HELLO_BODY_LEN, maxLength: SERVER_HELLO_BODY_LEN }).map((body) => {
    const b = Buffer.alloc(SERVER_HELLO_LEN);
    b[0] = HS_SERVER_HELLO;
    b.writeUInt16BE(SERVER_HELLO_BODY_LEN, 1);
    Buffer.from(body).copy(b, 3);
    return b;
  });
  const arb = fc.oneof(bytesArb, shLike, fc.tuple(shLike, fc.integer({ min: -5, max: 5 })).map(([b, d]) => (d < 0 ? b.subarray(0, b.length + d) : Buffer.concat([b, Buffer.alloc(d)]))));
  fc.assert(
    fc.property(arb, (b) => {
      const r = only(() => parseServerHello(b), ['BAD_HANDSHAKE_MESSAGE']);
      if (!(r instanceof ProtocolError)) {
        assert.equal(b.length, SERVER_HELLO_LEN);
        assert.equal(r.spki.length, SERVER_SPKI_LEN);
        assert.equal(r.signature.length, SERVER_SIGNATURE_LEN);
        assert.equal(r.signed.length, SERVER_HELLO_LEN - SERVER_SIGNATURE_LEN);
      }
      const rej = only(() => parseReject(b), ['BAD_HANDSHAKE_MESSAGE']);
      if (!(rej instanceof ProtocolError)) assert.ok(b[0] === HS_REJECT && Buffer.from(b).readUInt16BE(1) === REJECT_BODY_LEN && rej <= 0xffff);
    }),
    { numRuns: 1500 },
  );
});

test('classifyFirstBytes: only the magic is a client, and only a strict prefix of it asks for more', { timeout: 30000 }, () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 16 }), (b) => {
      const v = classifyFirstBytes(b);
      const isMagicPrefix = b.length < 4 && Buffer.from(b).equals(MAGIC.subarray(0, b.length));
      const isMagic = b.length >= 4 && Buffer.from(b.subarray(0, 4)).equals(MAGIC);
      assert.equal(v === 'need-data', isMagicPrefix);
      assert.equal(v === 'client', isMagic);
      assert.ok(['client', 'need-data', 'http', 'tls', 'ssh', 'garbage'].includes(v));
    }),
    { numRuns: 2000 },
  );
});
