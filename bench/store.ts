/**
 * Store benchmark (issue 3, must-show 8): point reads and single-row inserts through an encrypted
 * club store next to plain unencrypted better-sqlite3 (same package, no key, same pragmas and
 * schema) in the same run; document write and read MB/s next to a plain file copy of the same
 * size (the baseline), and read also next to a bare page-cache read. Standalone: `node dist/bench/store.js`.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { Readable, Writable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import Database from 'better-sqlite3-multiple-ciphers';
import { openStorage } from '../storage/server/storage.js';
import { createClub } from '../storage/server/provisioning.js';
import { putDocument, readDocument } from '../storage/club/documents.js';
import { MIGRATIONS } from '../storage/club/schema.js';
import { migrate, type Db } from '../storage/engine/sqlcipher.js';
import type { LegacyRow } from './row.js';

/** One figure next to a baseline measured in the same run (bench/row.ts). */
type Row = LegacyRow;

const PERSONS = 20_000;
const RUN_MS = 1_500;
const DOC_BYTES = 64 * 1024 * 1024;

function fill(db: Db): void {
  const ins = db.prepare(`INSERT INTO persons ("firstName", "lastName", "city", "photoConsent", "blocked") VALUES (?, ?, ?, 0, 0)`);
  db.transaction(() => {
    for (let i = 0; i < PERSONS; i++) ins.run(`Vorname${i}`, `Nachname${i}`, 'Musterstadt');
  })();
}

/** Operations per second of `fn`, looping for about `ms` after a short warm-up. */
function rate(fn: (i: number) => void, ms = RUN_MS): number {
  for (let i = 0; i < 200; i++) fn(i);
  let n = 0;
  const start = performance.now();
  let el = 0;
  while (el < ms) {
    for (let k = 0; k < 50; k++) fn(n++);
    el = performance.now() - start;
  }
  return (n / el) * 1000;
}

function pointReads(db: Db): number {
  const get = db.prepare('SELECT * FROM persons WHERE id = ?');
  let x = 12345;
  return rate(() => {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    get.get((x % PERSONS) + 1);
  });
}

function inserts(db: Db): number {
  const ins = db.prepare(`INSERT INTO persons ("firstName", "lastName", "photoConsent", "blocked") VALUES (?, ?, 0, 0)`);
  return rate((i) => void ins.run(`Neu${i}`, 'Eingefuegt'), 1000);
}

async function mbps(bytes: number, fn: () => Promise<void>): Promise<number> {
  const start = performance.now();
  await fn();
  return bytes / 1e6 / ((performance.now() - start) / 1000);
}

const sink = () => new Writable({ write(_c, _e, cb) { cb(); } });

export async function runStoreBench(): Promise<Row[]> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'commusic-bench-store-'));
  try {
    const st = await openStorage({ dataDir: path.join(dir, 'data'), create: true });
    const { id } = await createClub(st, { name: 'Bench', adminUser: 'admin', adminPassword: 'bench password 123' });
    const enc = st.openClub(id).db;
    fill(enc);
    const plain = new Database(path.join(dir, 'plain.db'));
    plain.pragma('journal_mode=WAL');
    plain.pragma('synchronous=FULL');
    plain.pragma('foreign_keys=ON');
    migrate(plain, MIGRATIONS, 'plain');
    fill(plain);

    const readEnc = pointReads(enc);
    const readPlain = pointReads(plain);
    const insEnc = inserts(enc);
    const insPlain = inserts(plain);
    plain.close();

    // Documents: 64 MiB of random bytes (incompressible), streamed from memory in 1 MiB pieces.
    const data = randomBytes(DOC_BYTES);
    const src = path.join(dir, 'plain.bin');
    fs.writeFileSync(src, data);
    const pieces = () => Readable.from((function* () { for (let i = 0; i < DOC_BYTES; i += 1 << 20) yield data.subarray(i, i + (1 << 20)); })());
    let docId = 0;
    const writeDoc = await mbps(DOC_BYTES, async () => {
      docId = (await putDocument(st, id, pieces(), { kind: 'other', name: 'bench.bin' })).id;
    });
    const copyPlain = await mbps(DOC_BYTES, async () => {
      const dst = path.join(dir, 'copy.bin');
      await pipeline(fs.createReadStream(src, { highWaterMark: 1 << 20 }), fs.createWriteStream(dst, { highWaterMark: 1 << 20 }));
      const fd = fs.openSync(dst, 'r');
      fs.fsyncSync(fd);
      fs.closeSync(fd);
    });
    const readDoc = await mbps(DOC_BYTES, async () => {
      await pipeline(readDocument(st, id, docId).stream, sink());
    });
    const readPlain2 = await mbps(DOC_BYTES, async () => {
      await pipeline(fs.createReadStream(src, { highWaterMark: 1 << 20 }), sink());
    });
    st.close();
    return [
      { name: 'club store point read (encrypted, WAL, synchronous=FULL)', value: readEnc, unit: 'reads/s', baseline: readPlain, baselineName: 'plain better-sqlite3, same schema and pragmas' },
      { name: 'club store single-row insert (own transaction, fsync)', value: insEnc, unit: 'inserts/s', baseline: insPlain, baselineName: 'plain better-sqlite3, same schema and pragmas' },
      { name: 'document write 64 MiB (encrypt, fsync, rename)', value: writeDoc, unit: 'MB/s', baseline: copyPlain, baselineName: 'plain file stream copy + fsync (same 1 MiB buffers)' },
      { name: 'document read 64 MiB (decrypt, verify SHA-256)', value: readDoc, unit: 'MB/s', baseline: copyPlain, baselineName: 'plain file stream copy + fsync (same 1 MiB buffers)' },
      // The stricter comparison: a bare read of a file in the page cache (memory bandwidth).
      { name: 'document read 64 MiB (decrypt, verify SHA-256)', value: readDoc, unit: 'MB/s', baseline: readPlain2, baselineName: 'plain file stream read, page cache (same 1 MiB buffers)' },
    ];
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const rows = await runStoreBench();
  for (const row of rows) {
    const ratio = row.baseline > 0 ? (row.value / row.baseline).toFixed(3) : 'n/a';
    console.log(`${row.name}: ${Math.round(row.value).toLocaleString('en')} ${row.unit}; ${row.baselineName}: ${Math.round(row.baseline).toLocaleString('en')} ${row.unit}; ratio ${ratio}`);
  }
}
