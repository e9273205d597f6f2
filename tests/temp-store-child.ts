// Child process for temp-store.test.ts: runs the storage engine's heavy paths (big sorts, a
// temporary table, an export, documents, a backup archive, a restore, a club key rotation, a
// master key rotation, the ban table) on a data folder, with the engine's temporary folder and an
// unlink-suppressing LD_PRELOAD shim set by the parent. With argv[3] === 'file-temp' it forces
// temp_store=FILE on one connection, so the parent can prove its probe catches a spill.
import { Readable } from 'node:stream';
import { openStorage } from '../storage/server/storage.js';
import { createClub } from '../storage/server/provisioning.js';
import { rotateClub, rotateMaster } from '../storage/server/key-rotation.js';
import { putDocument, readDocumentBuffer } from '../storage/club/documents.js';
import { listRecords } from '../storage/club/club-data.js';
import { BanStore } from '../storage/bans/ban-store.js';
import { archiveTrust, createClubArchive, restoreClubArchive, serverArchiveKey, writeFileAtomic, fileSource } from '../storage/backup/backup-archive.js';
import { testIdentity } from './helpers/pair.js';

const dataDir = process.argv[2]!;
const mode = process.argv[3] ?? 'normal';
const MARK = 'Geheimnotiz-Zwiebelkuchen';
const N = Number(process.env['TEMP_STORE_PERSONS'] ?? 10_000);

async function main(): Promise<void> {
  const st = await openStorage({ dataDir, create: true });
  const { id } = await createClub(st, { name: 'Musikverein Temp', adminUser: 'admin', plan: 'premium' });
  const store = st.openClub(id);
  const ins = store.db.prepare('INSERT INTO persons (firstName, lastName, notes, photoConsent, blocked, createdAt, updatedAt) VALUES (?, ?, ?, 0, 0, ?, ?)');
  const now = new Date().toISOString();
  store.db.transaction(() => {
    for (let i = 0; i < N; i++) {
      const note = `${MARK}-${i} ` + 'Vertraulich '.repeat(160);
      ins.run(`Vorname${i}`, `${MARK}Nachname${i}`, note.slice(0, 2000), now, now);
    }
  })();
  store.db.pragma('cache_size=16');
  if (mode === 'file-temp') store.db.pragma('temp_store=FILE');
  // Big sorts: the export path and raw ORDER BY on the long text column, one held open.
  const ex = listRecords(store.db, 'persons', { sort: [{ field: 'notes', dir: 'desc' }], limit: 100_000, scope: { kind: 'all' } as never });
  if (ex.items.length !== N) throw new Error(`export gave ${ex.items.length}`);
  const it = store.db.prepare('SELECT notes FROM persons ORDER BY lastName DESC, notes').iterate();
  it.next();
  it.return?.(undefined);
  store.db.exec('CREATE TEMP TABLE scratch AS SELECT * FROM persons ORDER BY notes');
  store.db.exec('CREATE INDEX temp.scratch_notes ON scratch(notes)');
  store.db.exec('DROP TABLE temp.scratch');
  store.db.pragma('cache_size=-2000');
  // Documents.
  const doc = Buffer.from(`${MARK} Dokument `.repeat(20_000));
  const info = await putDocument(st, id, Readable.from([doc]), { kind: 'honour', name: 'urkunde.pdf' });
  if (!(await readDocumentBuffer(st, id, info.id)).equals(doc)) throw new Error('document round trip');
  // Backup archive and restore.
  const archive = `${dataDir}/archive-test.cmbk`;
  st.identity = testIdentity();
  await writeFileAtomic(createClubArchive(st, id, { kind: 'server', key: serverArchiveKey(st) }).stream, archive);
  await restoreClubArchive(st, id, fileSource(archive), { serverKey: serverArchiveKey(st), trust: archiveTrust(st) }, { yes: true, actor: 'operator:test' });
  // Key rotations (VACUUM INTO + rekey copies).
  await rotateClub(st, id);
  await rotateMaster(st, {});
  // The ban table.
  const bans = BanStore.openInDir(dataDir);
  bans.close();
  st.close();
  process.stdout.write('done\n');
}

main().catch((e) => {
  process.stderr.write(String((e as Error).stack ?? e) + '\n');
  process.exit(1);
});
