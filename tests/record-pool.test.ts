import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { MAX_RECORD_SEALED, RECORD_DATA, RECORD_HEADER_LEN } from '../protocol/constants.js';
import { directionKeys } from '../protocol/key-schedule.js';
import { RecordReader, RecordSealer, recycleRecords } from '../protocol/record-layer.js';

/**
 * Large sealed records (stream chunks) are sealed into reused buffers (issue 13: no transient
 * 64 KiB buffers for the GC): a buffer comes back into use only after the writer recycled it,
 * never twice at once, and nothing but the layer's own buffers is ever taken into the pool.
 */
const secret = randomBytes(32);

function sealOne(s: RecordSealer, size: number): Buffer {
  const out: Buffer[] = [];
  s.seal(RECORD_DATA, Buffer.alloc(size, 1), out);
  assert.equal(out.length, 1);
  return out[0]!;
}

test('a recycled large record buffer is reused once; small records, foreign buffers and unrecycled ones never are', () => {
  const s = new RecordSealer(directionKeys(Buffer.from(secret)));
  const a = sealOne(s, 60_000);
  const b = sealOne(s, 60_000);
  assert.notEqual(a.buffer, b.buffer, 'two records in flight never share a buffer');
  recycleRecords([a, a]); // given back twice by mistake: still handed out once
  const c = sealOne(s, 30_000);
  const d = sealOne(s, 30_000);
  assert.equal(c.buffer, a.buffer, 'the recycled buffer is taken again');
  assert.notEqual(d.buffer, a.buffer, 'and only once');
  const foreign = Buffer.allocUnsafeSlow(RECORD_HEADER_LEN + MAX_RECORD_SEALED);
  recycleRecords([foreign]);
  assert.notEqual(sealOne(s, 40_000).buffer, foreign.buffer, 'a buffer of the same size from elsewhere is ignored');
  const small = sealOne(s, 100);
  recycleRecords([small]);
  assert.notEqual(sealOne(s, 20_000).buffer, small.buffer, "a small record (from Node's shared pool) is never taken in");
});

test('records sealed into reused buffers open correctly, in order', () => {
  const s = new RecordSealer(directionKeys(Buffer.from(secret)));
  const r = new RecordReader(directionKeys(Buffer.from(secret)));
  for (let i = 0; i < 40; i++) {
    const body = Buffer.alloc(20_000 + i * 1000, i);
    const out: Buffer[] = [];
    s.seal(RECORD_DATA, body, out);
    r.push(Buffer.from(out[0]!)); // the socket's copy
    recycleRecords(out); // the write is done: the next record may reuse this buffer
    const rec = r.next();
    assert.ok(rec && rec.plaintext.equals(body), `record ${i}`);
  }
});
