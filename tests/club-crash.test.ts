// Must-show 5: a writer killed mid-transaction or mid-document leaves the old or the new state,
// never a mix, and every write acknowledged before the kill is there after restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { openStorage } from '../storage/server/storage.js';
import { createClub } from '../storage/server/provisioning.js';
import { listDocuments, readDocumentBuffer, sweepOrphanDocuments } from '../storage/club/documents.js';
import { tmpDir } from './store-helpers.js';

const CHILD = join(dirname(fileURLToPath(import.meta.url)), 'club-crash-child.js');

/** Run the child until `until(lines)` is true, then SIGKILL it. Returns stdout lines. */
export function runAndKill(args: string[], until: (lines: string[]) => boolean, timeoutMs = 20_000): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: string[] = [];
    let buf = '';
    let err = '';
    let killed = false;
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error('child did not reach the kill point: ' + err)); }, timeoutMs);
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const parts = buf.split('\n');
      buf = parts.pop()!;
      lines.push(...parts);
      if (!killed && until(lines)) {
        killed = true;
        child.kill('SIGKILL');
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (signal === 'SIGKILL') resolve(lines);
      else reject(new Error(`child exited with ${code}: ${err}`));
    });
  });
}

test('writer killed mid-transaction: whole batches only, every acknowledged batch present', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  let st = await openStorage({ dataDir: dir, create: true });
  const { id } = await createClub(st, { name: 'MV Absturz', adminUser: 'admin', adminPassword: 'a long admin password' });
  st.close();
  for (const killAfter of [3, 40, 137]) {
    const lines = await runAndKill(['writer', dir, id], (ls) => ls.filter((l) => l.startsWith('ack')).length >= killAfter);
    const acked = lines.filter((l) => l.startsWith('ack')).map((l) => Number(l.split(' ')[1]));
    const maxAck = Math.max(...acked);
    st = await openStorage({ dataDir: dir });
    const rows = st.openClub(id).db.prepare('SELECT "firstName" AS b, count(*) AS n FROM persons GROUP BY "firstName"').all() as Array<{ b: string; n: number }>;
    for (const r of rows) assert.equal(r.n, 50, `batch ${r.b} is partial`);
    const batches = new Set(rows.map((r) => r.b));
    for (let b = 1; b <= maxAck; b++) assert.ok(batches.has(`B${b}`), `acknowledged batch ${b} lost`);
    assert.equal(st.openClub(id).db.pragma('integrity_check', { simple: true }), 'ok');
    st.openClub(id).db.exec('DELETE FROM persons');
    st.close();
  }
});

test('writer killed mid-document: acknowledged documents intact, the interrupted one absent', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  let st = await openStorage({ dataDir: dir, create: true });
  const { id } = await createClub(st, { name: 'MV Dokumentabsturz', adminUser: 'admin', adminPassword: 'a long admin password' });
  st.close();
  const lines = await runAndKill(['doc-writer', dir, id], (ls) => ls.some((l) => l === 'streaming 4') && ls.filter((l) => l.startsWith('streaming')).length >= 2);
  assert.equal(lines.filter((l) => l.startsWith('ack')).length, 3);
  st = await openStorage({ dataDir: dir });
  t.after(() => st.close());
  const docs = listDocuments(st, id);
  assert.deepEqual(docs.map((d) => d.name), ['doc1', 'doc2', 'doc3']);
  for (const d of docs) {
    const n = Number(d.name.slice(3));
    assert.deepEqual(await readDocumentBuffer(st, id, d.id), Buffer.alloc(65536 * n, n));
  }
  const docsDir = st.openClub(id).docsDir;
  assert.equal(readdirSync(docsDir).filter((f) => f.endsWith('.tmp')).length, 1, 'the interrupted write left only its temporary file');
  assert.equal(sweepOrphanDocuments(st, id, 0).length, 1);
  assert.equal(readdirSync(docsDir).length, 3);
});
