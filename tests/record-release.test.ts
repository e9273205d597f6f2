import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { joinBatch } from '../protocol/batch.js';
import { PROTOCOL_VERSION_2, RECORD_DATA } from '../protocol/constants.js';
import { encodeMessage, type Message } from '../protocol/messages.js';
import { releaseChunk, type RecordSealer } from '../protocol/record-layer.js';
import type { ServerSession } from '../protocol/server-session.js';
import { establishedPair } from './helpers/pair.js';

/**
 * Large records that straddle socket reads are gathered into pooled buffers, lent until the one
 * consumer of the record's single CHUNK releases it (issue 13, the 1 MiB echo). These tests hold
 * every chunk the server hands out and compare them only after all later records were read, so
 * a buffer reused while anything still referred to it shows as changed bytes.
 */

type Pair = ReturnType<typeof establishedPair>;

/** Client output delivered to the server in two owned pieces cut at `cut` (a record straddles them). */
function deliver(p: Pair, cut = 1000): Uint8Array[] {
  const wire = Buffer.concat(p.client.takeOutput());
  const at = Math.min(cut, wire.length - 1);
  p.server.receive(Buffer.from(wire.subarray(0, at)), true);
  p.server.receive(Buffer.from(wire.subarray(at)), true);
  return chunks(p.server);
}

function chunks(server: ServerSession): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (;;) {
    const e = server.nextEvent();
    if (e.type !== 'message') {
      assert.equal(e.type, 'need-data');
      return out;
    }
    const m = e.message as Message;
    assert.equal(m.kind, 'chunk');
    if (m.kind === 'chunk') out.push(m.data);
  }
}

function chunk(id: number, data: Uint8Array): Message {
  return { kind: 'chunk', id, data };
}

test('a released chunk gives its gathered record buffer back to the pool, once', () => {
  const p = establishedPair();
  const a = randomBytes(40000);
  p.client.sendMessage(chunk(1, a));
  const [got] = deliver(p);
  assert.ok(got && Buffer.from(got).equals(a));
  const first = got.buffer;
  releaseChunk(got);
  releaseChunk(got); // twice by mistake: still given back once
  // Client and server share the pool in this process: the client's next large record takes it.
  p.client.sendMessage(chunk(1, randomBytes(40000)));
  const out = p.client.takeOutput();
  assert.ok(out.some((b) => b.buffer === first), 'the pooled buffer is reused after the release');
  p.client.sendMessage(chunk(1, randomBytes(40000)));
  assert.ok(!p.client.takeOutput().some((b) => b.buffer === first), 'a buffer in use is not handed out twice');
});

test('chunks never released keep their bytes while later records are gathered', () => {
  const p = establishedPair();
  const sent: Buffer[] = [];
  const held: Uint8Array[] = [];
  for (let i = 0; i < 40; i++) {
    const d = randomBytes(20000 + ((i * 7919) % 40000));
    sent.push(Buffer.from(d));
    p.client.sendMessage(chunk(1, d));
    const got = deliver(p, 100 + ((i * 104729) % 15000));
    held.push(...got);
    // Every other chunk is released (an echo), the rest are held (a consumer that keeps them).
    if (i % 2 === 1) for (const g of got) releaseChunk(g);
  }
  for (let i = 0; i < 40; i += 2) assert.ok(Buffer.from(held[i]!).equals(sent[i]!), `held chunk ${i} unchanged`);
});

test('a record of several chunks is never given back, even when each chunk is released', () => {
  const p = establishedPair();
  assert.equal(p.server.negotiatedVersion, PROTOCOL_VERSION_2);
  // Our sender gives each large chunk a record of its own; another peer may batch them. Such a
  // record is sealed here by hand with the client's sealer: four 8 KB chunks in one record.
  const big = Array.from({ length: 4 }, () => randomBytes(8000));
  const sealer = (p.client as unknown as { sealer: RecordSealer }).sealer;
  const wire: Buffer[] = [];
  sealer.seal(RECORD_DATA, joinBatch(big.map((d) => encodeMessage(chunk(1, d)))), wire);
  const all = Buffer.concat(wire);
  p.server.receive(Buffer.from(all.subarray(0, 100)), true);
  p.server.receive(Buffer.from(all.subarray(100)), true);
  const batch = chunks(p.server);
  assert.equal(batch.length, 4);
  assert.ok(batch.every((b) => b.buffer === batch[0]!.buffer), 'the chunks are views of one gathered record');
  for (const b of batch.slice(0, 3)) releaseChunk(b);
  for (let i = 0; i < 6; i++) {
    p.client.sendMessage(chunk(1, randomBytes(50000)));
    const out = p.client.takeOutput();
    assert.ok(!out.some((b) => b.buffer === batch[0]!.buffer), 'the shared record buffer is not reused for sealing');
    const w = Buffer.concat(out);
    p.server.receive(Buffer.from(w.subarray(0, 3000)), true);
    p.server.receive(Buffer.from(w.subarray(3000)), true);
    for (const g of chunks(p.server)) {
      assert.notEqual(g.buffer, batch[0]!.buffer, 'the shared record buffer is not reused for reading');
      releaseChunk(g);
    }
  }
  for (let i = 0; i < 4; i++) assert.ok(Buffer.from(batch[i]!).equals(big[i]!), `batched chunk ${i} unchanged`);
});
