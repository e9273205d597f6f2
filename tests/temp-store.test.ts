// Issue 10, must-show 1: the storage engine writes no plaintext beside the encrypted files. A
// child process runs big sorts (10,000 persons with 2,000-character notes, a tiny page cache),
// a temporary table, an export, documents, a backup archive, a restore, a club key rotation
// and a master key rotation, with SQLite's temporary folder pointed at a private folder and an
// LD_PRELOAD shim (compiled here with cc) that keeps every file SQLite would unlink there. Then
// every byte under the temporary folder and the data folder is searched for the plaintexts.
// A control run with temp_store=FILE on one connection proves the probe catches a spill.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findPlaintext, needleVariants, tmpDir, walk } from './store-helpers.js';
import { buildShim, hasCc } from './helpers/keep-temp-shim.js';
import { openDatabase } from '../storage/engine/sqlcipher.js';

const MARK = 'Geheimnotiz-Zwiebelkuchen';

async function runChild(dataDir: string, tempDir: string, shim: string, mode: string, persons: number): Promise<void> {
  const child = spawn(process.execPath, [fileURLToPath(new URL('./temp-store-child.js', import.meta.url)), dataDir, mode], {
    env: { ...process.env, SQLITE_TMPDIR: tempDir, TMPDIR: tempDir, LD_PRELOAD: shim, TEMP_STORE_PERSONS: String(persons) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  assert.equal(code, 0, `child failed: ${err}`);
  assert.match(out, /done/);
}

test('no plaintext temporary files: sorts, exports, documents, backup, restore, rotations (engine temp folder observed)', { skip: !hasCc && 'needs cc for the LD_PRELOAD shim', timeout: 240_000 }, async (t) => {
  const { dir, cleanup } = tmpDir('commusic-tempstore-');
  t.after(cleanup);
  const shim = buildShim(dir);
  const needles = { ...needleVariants('note marker', MARK), ...needleVariants('note text', 'Vertraulich Vertraulich Vertraulich') };

  // Control: with temp_store=FILE on the club connection, the probe finds the spill.
  const ctlTemp = join(dir, 'control-temp');
  mkdirSync(ctlTemp, { mode: 0o700 });
  await runChild(join(dir, 'control-data'), ctlTemp, shim, 'file-temp', 3_000);
  assert.ok(readdirSync(ctlTemp).some((n) => n.includes('etilqs')), 'the shim kept the engine temporary files of the control run');
  assert.ok(findPlaintext(ctlTemp, needles).length > 0, 'the control run spilled plaintext to a temporary file (probe works)');

  // The real run: every connection as the server opens it.
  const temp = join(dir, 'temp');
  mkdirSync(temp, { mode: 0o700 });
  const data = join(dir, 'data');
  await runChild(data, temp, shim, 'normal', 10_000);
  assert.deepEqual(walk(temp), [], 'nothing written to the engine temporary folder');
  assert.deepEqual(findPlaintext(temp, needles), []);
  assert.deepEqual(findPlaintext(data, needles), []);
});

test('every connection runs with temp_store=MEMORY and trusted_schema=OFF; a big sort with a tiny cache opens no temporary file', () => {
  const { dir, cleanup } = tmpDir('commusic-tempfd-');
  const db = openDatabase(join(dir, 'x.db'));
  try {
    assert.equal(db.pragma('temp_store', { simple: true }), 2);
    assert.equal(db.pragma('trusted_schema', { simple: true }), 0);
    db.exec('CREATE TABLE t (x TEXT)');
    const ins = db.prepare('INSERT INTO t VALUES (?)');
    db.transaction(() => {
      for (let i = 0; i < 5_000; i++) ins.run(`${i} ${'x'.repeat(2000)}`);
    })();
    db.pragma('cache_size=16');
    // The sorter has sorted everything once the first row comes out; its files would be open now.
    const it = db.prepare('SELECT x FROM t ORDER BY x DESC').iterate();
    assert.equal(it.next().done, false);
    const temp = readdirSync('/proc/self/fd').map((fd) => {
      try {
        return readlinkSync(join('/proc/self/fd', fd));
      } catch {
        return '';
      }
    }).filter((l) => l.includes('etilqs'));
    it.return?.(undefined);
    assert.deepEqual(temp, [], 'no engine temporary file is open during the sort');
  } finally {
    db.close();
    cleanup();
  }
});
