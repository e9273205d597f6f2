import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { ClientSession, pinFingerprint } from '../protocol/client-session.js';
import { joinBatch } from '../protocol/batch.js';
import { MAX_CHUNK_LEN, RECORD_DATA, RECORD_HEADER_LEN } from '../protocol/constants.js';
import { encodeMessage, type Message } from '../protocol/messages.js';
import { POOL_FROM, READ_BUFFER_LEN, ReadInput, readBufferCounts, releaseChunk } from '../protocol/read-buffers.js';
import type { RecordSealer } from '../protocol/record-layer.js';
import { ServerSession } from '../protocol/server-session.js';
import { concat, drain, establishedPair, testIdentity } from './helpers/pair.js';

/**
 * Socket reads into reused buffers (issue 13, protocol/read-buffers.ts): reads land in a
 * shared landing buffer or in a pooled read buffer, whole records are opened where they lie,
 * and a read buffer is reused once nothing can read it. These tests play the socket: each read
 * writes a piece of the wire into target() and calls landed(), as Node does with onread. Every
 * chunk or value a consumer keeps is held and compared only after all later reads, so a buffer
 * reused while anything still referred to it shows as changed bytes.
 */

type Server = ServerSession;

/** A socket of one connection: pieces of pseudo-random length (1 byte up to 80 KiB), read into target(). */
class FakeSocket {
  readonly input = new ReadInput();
  private seed: number;
  constructor(
    readonly server: Server,
    seed: number,
  ) {
    this.seed = seed;
  }

  private nextLen(): number {
    this.seed = (this.seed * 1103515245 + 12345) >>> 0;
    const s = this.seed;
    return 1 + (s % 3 === 0 ? s % 7 : s % 81920);
  }

  /** Reads all of `wire` in pieces; `onMessage` sees each message the server yields. */
  read(wire: Buffer, onMessage: (m: Message) => void, oneRead = false): void {
    for (let at = 0; at < wire.length; ) {
      const t = this.input.target();
      assert.ok(t.length > 0, 'a read target is never empty');
      const k = Math.min(oneRead ? wire.length - at : this.nextLen(), t.length, wire.length - at);
      wire.copy(t, 0, at, at + k);
      at += k;
      const s = this.server;
      const bytes = this.input.landed(k, s.readingRecords && s.bufferedBytes === 0);
      if (bytes) s.receive(bytes, this.input.owned);
      for (const e of drain(s)) {
        if (e.type === 'message') {
          onMessage(e.message);
          for (let m = s.nextQueuedMessage(); m; m = s.nextQueuedMessage()) onMessage(m);
        } else assert.ok(e.type === 'need-data' || e.type === 'hello' || e.type === 'established', `unexpected ${e.type}`);
      }
      // Whole records only: the session never holds the start of one.
      if (s.readingRecords) assert.equal(s.bufferedBytes, 0);
    }
    this.input.target(); // as Node asks for the next buffer after each read
  }
}

function chunk(id: number, data: Uint8Array): Message {
  return { kind: 'chunk', id, data };
}

/** Sizes of chunks that hit every case: tiny, batched, own record, views (>= 32 KiB), the maximum. */
function chunkSize(i: number): number {
  const sizes = [1, 100, 3000, 4096, 20000, 32779, 40000, 60000, MAX_CHUNK_LEN];
  return sizes[i % sizes.length]! - (i % 3);
}

test('chunks kept by their consumer stay intact while read buffers are reused for later reads (two connections taking turns)', () => {
  const before = readBufferCounts();
  const pairs = [establishedPair(), establishedPair()];
  const sockets = pairs.map((p, k) => new FakeSocket(p.server, 11 + k * 31));
  const sent: Buffer[][] = [[], []];
  const held: { got: Uint8Array; want: Buffer }[] = [];
  let released = 0;
  for (let round = 0; round < 40; round++) {
    for (let k = 0; k < 2; k++) {
      const p = pairs[k]!;
      // A few chunks and a ping per round, gathered into one write as a client's flush would.
      for (let j = 0; j < 3; j++) {
        const d = randomBytes(chunkSize(round * 3 + j + k));
        sent[k]!.push(d);
        p.client.sendMessage(chunk(1, d));
      }
      p.client.sendMessage({ kind: 'request', id: 2, command: 'ping', payload: { n: round }, stream: false });
      const wire = concat(p.client.takeOutput());
      let i = 0;
      sockets[k]!.read(wire, (m) => {
        if (m.kind !== 'chunk') return;
        const want = sent[k]!.shift()!;
        assert.ok(Buffer.from(m.data).equals(want), 'chunk as sent');
        i++;
        // Every other chunk is echoed (sealed, then released); the rest are kept by their consumer.
        if (i % 2 === 0) {
          releaseChunk(m.data);
          released++;
        } else held.push({ got: m.data, want });
      });
    }
  }
  for (const [n, h] of held.entries()) assert.ok(Buffer.from(h.got).equals(h.want), `kept chunk ${n} unchanged after later reads`);
  const after = readBufferCounts();
  assert.ok(released > 0);
  assert.ok(after.reused > before.reused, 'read buffers were reused (the test exercised reuse)');
});

test('a read buffer goes back only when its lent chunk is released, once, however often release is called', () => {
  const p = establishedPair();
  const sock = new FakeSocket(p.server, 5);
  const big = randomBytes(60000);
  p.client.sendMessage(chunk(1, big));
  let got: Uint8Array | undefined;
  sock.read(concat(p.client.takeOutput()), (m) => m.kind === 'chunk' && (got = m.data), true);
  assert.ok(got && got.length === 60000 && got.buffer.byteLength === READ_BUFFER_LEN, 'the chunk is a view of its read buffer');
  const ab = got.buffer;
  // Held: its buffer never comes back for later records, which keep arriving.
  for (let i = 0; i < 20; i++) {
    p.client.sendMessage(chunk(1, randomBytes(50000)));
    sock.read(concat(p.client.takeOutput()), (m) => {
      assert.ok(m.kind === 'chunk' && m.data.buffer !== ab, 'a buffer with a lent chunk is not read into');
      releaseChunk(m.data);
    }, true);
  }
  assert.ok(Buffer.from(got).equals(big));
  const r0 = readBufferCounts().recycled;
  releaseChunk(got);
  releaseChunk(got); // a second release of the same chunk does nothing
  releaseChunk(new Uint8Array(ab, got.byteOffset, got.length)); // nor does a view that was never lent
  assert.equal(readBufferCounts().recycled, r0 + 1, 'given back once');
  let reusedIt = false;
  for (let i = 0; i < 10 && !reusedIt; i++) {
    p.client.sendMessage(chunk(1, randomBytes(50000)));
    sock.read(concat(p.client.takeOutput()), (m) => {
      if (m.kind === 'chunk' && m.data.buffer === ab) reusedIt = true;
      if (m.kind === 'chunk') releaseChunk(m.data);
    }, true);
  }
  assert.ok(reusedIt, 'the released buffer is read into again');
});

test('views nobody gives back pin their read buffer: a chunk in a batch of several messages, a large byte string in a request', () => {
  const p = establishedPair();
  const sock = new FakeSocket(p.server, 9);
  const sealer = (p.client as unknown as { sealer: RecordSealer }).sealer;
  // A batch: one chunk large enough to be a view (>= half the buffer) and a small request.
  const inBatch = randomBytes(33000);
  const wire: Buffer[] = [];
  sealer.seal(RECORD_DATA, joinBatch([encodeMessage(chunk(1, inBatch)), encodeMessage({ kind: 'request', id: 3, command: 'ping', payload: {}, stream: false })]), wire);
  // A request whose payload holds a 40,000-byte byte string (a view of the record).
  const inPayload = randomBytes(40000);
  p.client.sendMessage({ kind: 'request', id: 4, command: 'ping', payload: { data: inPayload }, stream: false });
  wire.push(...p.client.takeOutput());
  const kept: Uint8Array[] = [];
  for (const w of wire) {
    sock.read(w, (m) => {
      if (m.kind === 'chunk') kept.push(m.data);
      if (m.kind === 'request' && m.id === 4) kept.push((m.payload as { data: Uint8Array }).data);
    }, true);
  }
  assert.equal(kept.length, 2);
  assert.ok(kept.every((v) => v.buffer.byteLength === READ_BUFFER_LEN), 'both are views of read buffers');
  for (const v of kept) releaseChunk(v); // no effect: neither was lent
  const pinned = new Set(kept.map((v) => v.buffer));
  for (let i = 0; i < 30; i++) {
    p.client.sendMessage(chunk(1, randomBytes(45000 + i)));
    sock.read(concat(p.client.takeOutput()), (m) => {
      assert.ok(m.kind === 'chunk' && !pinned.has(m.data.buffer), 'a pinned buffer is never read into again');
      releaseChunk(m.data);
    });
  }
  assert.ok(Buffer.from(kept[0]!).equals(inBatch) && Buffer.from(kept[1]!).equals(inPayload));
});

test('the start of a record takes a read buffer only once 16 KiB of it are in (a trickling peer holds little)', () => {
  const p = establishedPair();
  const sock = sock1(p.server);
  p.client.sendMessage(chunk(1, randomBytes(MAX_CHUNK_LEN)));
  const wire = concat(p.client.takeOutput());
  const c0 = readBufferCounts();
  const taken = () => readBufferCounts().made + readBufferCounts().reused - c0.made - c0.reused;
  // The header and one byte, then a byte at a time: kept in buffers of their own size.
  let at = 0;
  const feed = (k: number) => {
    const t = sock.input.target();
    wire.copy(t, 0, at, at + k);
    at += k;
    return sock.input.landed(k, true);
  };
  assert.equal(feed(RECORD_HEADER_LEN + 1), undefined);
  for (let i = 0; i < 100; i++) assert.equal(feed(1), undefined);
  assert.equal(sock.input.pending, RECORD_HEADER_LEN + 101);
  assert.equal(taken(), 0, 'no read buffer for 106 bytes');
  assert.equal(feed(POOL_FROM - sock.input.pending - 1), undefined);
  assert.equal(taken(), 0, 'none for one byte less than POOL_FROM');
  assert.equal(feed(1), undefined);
  assert.equal(taken(), 1, 'one at POOL_FROM');
  const whole = feed(wire.length - at);
  assert.ok(whole && whole.length === wire.length && sock.input.pending === 0);
  p.server.receive(whole, sock.input.owned);
  const [e] = drain(p.server);
  assert.ok(e?.type === 'message' && e.message.kind === 'chunk' && e.message.data.length === MAX_CHUNK_LEN);
  sock.input.close();
});

function sock1(server: Server): FakeSocket {
  return new FakeSocket(server, 1);
}

test('the handshake is handed on as copies: the landing buffer is reused at once and the session still completes', () => {
  const identity = testIdentity();
  const server = new ServerSession({ identity });
  const client = new ClientSession({ acceptServerKey: pinFingerprint(identity.fingerprint) });
  const sock = new FakeSocket(server, 3);
  client.start();
  const hello = concat(client.takeOutput());
  sock.read(hello, () => undefined, true);
  // The landing buffer is overwritten by the next read of any connection: scribble over it.
  sock.input.target().fill(0xee);
  client.receive(concat(server.takeOutput()));
  drain(client);
  const finished = concat(client.takeOutput());
  let established = false;
  const at = sock.input.target();
  finished.copy(at);
  const bytes = sock.input.landed(finished.length, server.readingRecords && server.bufferedBytes === 0);
  assert.ok(bytes);
  server.receive(bytes, sock.input.owned);
  for (const e of drain(server)) if (e.type === 'established') established = true;
  assert.ok(established, 'the handshake completed from bytes read through ReadInput');
});
