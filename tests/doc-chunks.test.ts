// Must-show 4: a tampered, truncated, reordered or swapped document chunk is rejected on read;
// plus the streamed format's edge cases (empty, exact multiples of the chunk size).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { decryptBuffer, encryptBuffer, STREAM_HEADER_LEN, STREAM_TAG_LEN } from '../crypto/chunked-aead.js';
import { openStorage } from '../storage/server/storage.js';
import { createClub } from '../storage/server/provisioning.js';
import { deleteDocument, listDocuments, putDocument, readDocumentBuffer } from '../storage/club/documents.js';
import { tmpDir } from './store-helpers.js';

type Coded = Error & { code?: string };
const LOG2 = 12;
const CH = 2 ** LOG2;
const REC = CH + STREAM_TAG_LEN;

test('round trip for sizes around chunk boundaries', async () => {
  const key = randomBytes(32);
  for (const n of [0, 1, CH - 1, CH, CH + 1, 3 * CH, 3 * CH + 7]) {
    const pt = randomBytes(n);
    const ct = await encryptBuffer(key, pt, { chunkLog2: LOG2 });
    assert.equal(ct.length, STREAM_HEADER_LEN + Math.max(1, Math.ceil(n / CH)) * STREAM_TAG_LEN + n, `size ${n}`);
    assert.deepEqual(await decryptBuffer(key, ct), pt);
  }
});

test('tampered, truncated, reordered, swapped, wrong-key streams are rejected', async () => {
  const key = randomBytes(32);
  const pt = randomBytes(4 * CH + 100);
  const ct = await encryptBuffer(key, pt, { chunkLog2: LOG2 });
  const chunk = (c: Buffer, i: number) => c.subarray(STREAM_HEADER_LEN + i * REC, STREAM_HEADER_LEN + (i + 1) * REC);
  const corrupt = async (c: Buffer, code: string | RegExp, k = key) =>
    assert.rejects(decryptBuffer(k, c), (e: Coded) => (typeof code === 'string' ? e.code === code : code.test(e.code ?? '')));

  const flip = Buffer.from(ct);
  flip[STREAM_HEADER_LEN + REC + 5]! ^= 0x01;
  await corrupt(flip, 'STREAM_CORRUPT');
  const flipTag = Buffer.from(ct);
  flipTag[ct.length - 1]! ^= 0x80;
  await corrupt(flipTag, 'STREAM_CORRUPT');
  const flipHeader = Buffer.from(ct);
  flipHeader[20]! ^= 1; // salt
  await corrupt(flipHeader, 'STREAM_CORRUPT');
  // truncation: drop the final chunk (file ends on a chunk boundary), or cut inside a chunk
  await corrupt(ct.subarray(0, STREAM_HEADER_LEN + 4 * REC), 'STREAM_CORRUPT');
  await corrupt(ct.subarray(0, ct.length - 1), 'STREAM_CORRUPT');
  await corrupt(ct.subarray(0, STREAM_HEADER_LEN + 10), /STREAM_TRUNCATED|STREAM_CORRUPT/);
  await corrupt(ct.subarray(0, 20), 'STREAM_TRUNCATED');
  // extension: an extra chunk after the final one
  await corrupt(Buffer.concat([ct, chunk(ct, 1)]), 'STREAM_CORRUPT');
  // reorder: swap chunks 1 and 2
  await corrupt(Buffer.concat([ct.subarray(0, STREAM_HEADER_LEN), chunk(ct, 0), chunk(ct, 2), chunk(ct, 1), ct.subarray(STREAM_HEADER_LEN + 3 * REC)]), 'STREAM_CORRUPT');
  // duplicate a chunk in place of another
  await corrupt(Buffer.concat([ct.subarray(0, STREAM_HEADER_LEN), chunk(ct, 0), chunk(ct, 0), ct.subarray(STREAM_HEADER_LEN + 2 * REC)]), 'STREAM_CORRUPT');
  // swap: chunk 1 from another file under the same key
  const other = await encryptBuffer(key, randomBytes(4 * CH + 100), { chunkLog2: LOG2 });
  await corrupt(Buffer.concat([ct.subarray(0, STREAM_HEADER_LEN + REC), chunk(other, 1), ct.subarray(STREAM_HEADER_LEN + 2 * REC)]), 'STREAM_CORRUPT');
  // another file's header with this file's chunks
  await corrupt(Buffer.concat([other.subarray(0, STREAM_HEADER_LEN), ct.subarray(STREAM_HEADER_LEN)]), 'STREAM_CORRUPT');
  await corrupt(ct, 'WRONG_KEY', randomBytes(32));
  const badMagic = Buffer.from(ct);
  badMagic[0] = 0;
  await corrupt(badMagic, 'STREAM_HEADER_INVALID');
  assert.deepEqual(await decryptBuffer(key, ct), pt);
});

test('club documents: stored encrypted, read back, and any chunk damage is DOC_CORRUPT', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const st = await openStorage({ dataDir: dir, create: true });
  t.after(() => st.close());
  const { id } = await createClub(st, { name: 'MV Dokumente', adminUser: 'admin', adminPassword: 'a long admin password' });
  const a = randomBytes(5 * CH + 3);
  const b = randomBytes(5 * CH + 3);
  // Stream in pieces of odd sizes: the writer never needs the whole file.
  const pieces = (buf: Buffer) => Readable.from((function* () { for (let i = 0; i < buf.length; i += 1000) yield buf.subarray(i, i + 1000); })());
  const da = await putDocument(st, id, pieces(a), { kind: 'federation-registration', name: 'a.pdf' }, { chunkLog2: LOG2 });
  const db = await putDocument(st, id, pieces(b), { kind: 'reporter', name: 'b.pdf' }, { chunkLog2: LOG2 });
  assert.equal(listDocuments(st, id).length, 2);
  assert.deepEqual(await readDocumentBuffer(st, id, da.id), a);
  const docsDir = st.openClub(id).docsDir;
  const files = st.openClub(id).db.prepare('SELECT id, file FROM documents ORDER BY id').all() as Array<{ id: number; file: string }>;
  const fa = join(docsDir, files[0]!.file);
  const fb = join(docsDir, files[1]!.file);
  const origA = readFileSync(fa);
  const origB = readFileSync(fb);
  const isCorrupt = (e: Coded) => e.code === 'DOC_CORRUPT';

  const tampered = Buffer.from(origA);
  tampered[STREAM_HEADER_LEN + 2 * REC + 9]! ^= 4;
  writeFileSync(fa, tampered);
  await assert.rejects(readDocumentBuffer(st, id, da.id), isCorrupt);
  writeFileSync(fa, origA.subarray(0, origA.length - REC / 2));
  await assert.rejects(readDocumentBuffer(st, id, da.id), isCorrupt);
  writeFileSync(fa, origA.subarray(0, STREAM_HEADER_LEN + 5 * REC));
  await assert.rejects(readDocumentBuffer(st, id, da.id), isCorrupt);
  const c = (buf: Buffer, i: number) => buf.subarray(STREAM_HEADER_LEN + i * REC, STREAM_HEADER_LEN + (i + 1) * REC);
  writeFileSync(fa, Buffer.concat([origA.subarray(0, STREAM_HEADER_LEN), c(origA, 1), c(origA, 0), origA.subarray(STREAM_HEADER_LEN + 2 * REC)]));
  await assert.rejects(readDocumentBuffer(st, id, da.id), isCorrupt);
  // whole file of document b under a's name (a swapped file): b's key id differs
  writeFileSync(fa, origB);
  await assert.rejects(readDocumentBuffer(st, id, da.id), isCorrupt);
  // one chunk of b inside a
  writeFileSync(fa, Buffer.concat([origA.subarray(0, STREAM_HEADER_LEN + REC), c(origB, 1), origA.subarray(STREAM_HEADER_LEN + 2 * REC)]));
  await assert.rejects(readDocumentBuffer(st, id, da.id), isCorrupt);
  // wrapped keys swapped between the two rows: bound to the file name, so refused
  writeFileSync(fa, origA);
  const s = st.openClub(id);
  const ka = s.db.prepare('SELECT wrappedKey FROM documents WHERE id = ?').get(da.id) as { wrappedKey: Buffer };
  const kb = s.db.prepare('SELECT wrappedKey FROM documents WHERE id = ?').get(db.id) as { wrappedKey: Buffer };
  s.db.prepare('UPDATE documents SET wrappedKey = ? WHERE id = ?').run(kb.wrappedKey, da.id);
  await assert.rejects(readDocumentBuffer(st, id, da.id), isCorrupt);
  s.db.prepare('UPDATE documents SET wrappedKey = ? WHERE id = ?').run(ka.wrappedKey, da.id);
  assert.deepEqual(await readDocumentBuffer(st, id, da.id), a);
  assert.deepEqual(await readDocumentBuffer(st, id, db.id), b);

  deleteDocument(st, id, da.id);
  assert.deepEqual(readdirSync(docsDir), [files[1]!.file]);
  await assert.rejects(async () => readDocumentBuffer(st, id, da.id), (e: Coded) => e.code === 'DOC_NOT_FOUND');
});
