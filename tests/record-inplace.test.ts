import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { connect } from '../client/connection.js';
import { RECORD_DATA, RECORD_HEADER_LEN, MAX_RECORD_PLAINTEXT } from '../protocol/constants.js';
import { ProtocolError } from '../protocol/errors.js';
import { decodeMessage, encodeMessage } from '../protocol/messages.js';
import { directionKeys } from '../protocol/key-schedule.js';
import { RecordReader, RecordSealer } from '../protocol/record-layer.js';
import { startDaemon, type TestDaemon } from './helpers/daemon.js';

/**
 * Records are opened in place (issue 13): a record inside one received buffer is decrypted
 * where it lies and its plaintext is a view of that buffer; a record that straddles buffers is
 * gathered into a buffer of its own. These tests would catch a buffer being reused or
 * overwritten while a plaintext handed out earlier still refers to it: every plaintext is held
 * until all input has been read, and only then compared.
 */
const secret = randomBytes(32);
const keys = () => directionKeys(Buffer.from(secret));

/** `n` records of random sizes (some of a full 64 KiB) sealed back to back, with their plaintexts. */
function sealedStream(n: number, sizes: (i: number) => number): { wire: Buffer; plain: Buffer[] } {
  const sealer = new RecordSealer(keys());
  const out: Buffer[] = [];
  const plain: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const p = randomBytes(sizes(i));
    plain.push(Buffer.from(p));
    sealer.seal(RECORD_DATA, p, out);
  }
  return { wire: Buffer.concat(out), plain };
}

/** The wire cut into pieces of pseudo-random lengths (1 byte up to 80 KiB), as TCP might deliver it. */
function pieces(wire: Buffer, seed: number): Buffer[] {
  const out: Buffer[] = [];
  let s = seed;
  for (let at = 0; at < wire.length; ) {
    s = (s * 1103515245 + 12345) >>> 0;
    const len = Math.min(wire.length - at, 1 + (s % 3 === 0 ? s % 7 : s % 81920));
    // A fresh buffer per piece, as a socket read is.
    out.push(Buffer.from(wire.subarray(at, at + len)));
    at += len;
  }
  return out;
}

function readAll(reader: RecordReader, input: Buffer[], owned: boolean): Buffer[] {
  const got: Buffer[] = [];
  for (const piece of input) {
    reader.push(piece, owned);
    for (let r = reader.next(); r; r = reader.next()) got.push(r.plaintext);
  }
  return got;
}

test('plaintexts opened in place stay intact while later input is read (held, compared at the end)', () => {
  for (const seed of [1, 7, 42, 1234, 99999]) {
    const { wire, plain } = sealedStream(60, (i) => (i % 5 === 0 ? MAX_RECORD_PLAINTEXT : 1 + ((i * 7919) % 3000)));
    const got = readAll(new RecordReader(keys()), pieces(wire, seed), true);
    assert.equal(got.length, plain.length);
    for (let i = 0; i < plain.length; i++) assert.ok(got[i]!.equals(plain[i]!), `record ${i} (seed ${seed}) changed after later reads`);
  }
});

test('a caller that does not hand its buffers over gets them back unchanged (records copied before opening)', () => {
  const { wire, plain } = sealedStream(20, (i) => 100 + i * 500);
  const input = pieces(wire, 3);
  const before = input.map((b) => Buffer.from(b));
  const got = readAll(new RecordReader(keys()), input, false);
  assert.equal(got.length, plain.length);
  for (let i = 0; i < plain.length; i++) assert.ok(got[i]!.equals(plain[i]!));
  for (let i = 0; i < input.length; i++) assert.ok(input[i]!.equals(before[i]!), `input piece ${i} was written to`);
});

test('a tampered record inside a handed-over buffer fails authentication and yields nothing of its plaintext', () => {
  for (const whole of [true, false]) {
    const { wire } = sealedStream(3, () => 2000);
    const bad = Buffer.from(wire);
    const second = RECORD_HEADER_LEN + 2000 + 16;
    bad[second + RECORD_HEADER_LEN + 10]! ^= 1;
    const reader = new RecordReader(keys());
    // Whole: all records in one buffer (opened in place); split: the tampered one straddles.
    const input = whole ? [bad] : [bad.subarray(0, second + 100), bad.subarray(second + 100)].map((b) => Buffer.from(b));
    const got: Buffer[] = [];
    assert.throws(
      () => {
        for (const piece of input) {
          reader.push(piece, true);
          for (let r = reader.next(); r; r = reader.next()) got.push(r.plaintext);
        }
      },
      (e: unknown) => e instanceof ProtocolError && e.code === 'BAD_RECORD_MAC',
    );
    assert.equal(got.length, 1, 'only the record before the tampered one was returned');
    // The tampered record's range was wiped, not left as unauthenticated plaintext.
    if (whole) assert.ok(bad.subarray(second + RECORD_HEADER_LEN, second + RECORD_HEADER_LEN + 2000).every((x) => x === 0));
  }
});

let td: TestDaemon;

before(async () => {
  td = await startDaemon();
});

after(async () => {
  await td.stop();
});

test('a byte string is a view of its buffer only when it is most of it: a small chunk beside discarded input is copied (no 16x pinning)', () => {
  // A chunk of 4 KiB in a 64 KiB read (the rest: input the server throws away) must not keep the
  // read alive: flow control counts 4 KiB. A chunk that is most of its buffer is a view.
  const msg = (data: Uint8Array) => encodeMessage({ kind: 'chunk', id: 7, data });
  const small = msg(randomBytes(4096));
  const read = Buffer.alloc(65536);
  read.set(small, 100);
  const m1 = decodeMessage(read.subarray(100, 100 + small.length), true) as { data: Uint8Array };
  assert.equal(m1.data.length, 4096);
  assert.ok(m1.data.buffer.byteLength < 16384, `a 4 KiB chunk pins ${m1.data.buffer.byteLength} bytes`);
  const big = msg(randomBytes(40000));
  const read2 = Buffer.alloc(65536);
  read2.set(big, 0);
  const m2 = decodeMessage(read2.subarray(0, big.length), true) as { data: Uint8Array };
  assert.equal(m2.data.buffer, read2.buffer, 'a chunk that is most of its read is a view (no copy)');
  // not owned: always a copy
  const m3 = decodeMessage(read2.subarray(0, big.length), false) as { data: Uint8Array };
  assert.notEqual(m3.data.buffer, read2.buffer);
});

test('pipelined pings over the daemon: every answer held and compared after all of them arrived', { timeout: 60000 }, async () => {
  const c = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.0.71' });
  try {
    const sent = Array.from({ length: 400 }, (_, i) => randomBytes(1 + ((i * 131) % 700)));
    const answers = await Promise.all(sent.map((data) => c.request('ping', { data })));
    // Held until now: later reads (in place, on both sides) must not have changed any of them.
    for (let i = 0; i < sent.length; i++) {
      const back = (answers[i]!.payload as { data: Uint8Array }).data;
      assert.ok(Buffer.from(back).equals(sent[i]!), `answer ${i} differs`);
    }
  } finally {
    await c.close();
  }
});

test('a 6 MiB upload echoed back arrives intact (SHA-256), chunks held until the end', { timeout: 60000 }, async () => {
  const c = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.0.72', requestTimeoutMs: 50000 });
  try {
    const body = randomBytes(6 * 1024 * 1024 + 12345);
    const res = await c.request('diag.echoStream', {}, { upload: body });
    const held: Uint8Array[] = [];
    for await (const piece of res.download!) held.push(piece);
    const h = createHash('sha256');
    for (const p of held) h.update(p);
    assert.equal(h.digest('hex'), createHash('sha256').update(body).digest('hex'));
  } finally {
    await c.close();
  }
});
