/**
 * Issue 6, points 1-3: a backup taken during concurrent writes restores to one consistent
 * moment (the change log verifies); backup then restore round-trips every row and document
 * hash, also onto a server with another master key; tampered or truncated archives are refused
 * by verify and restore with a clear message, leaving the live store untouched.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { verifyAuditLog } from '../storage/club/audit-log.js';
import {
  archiveTrust,
  createClubArchive,
  decryptArchiveToFile,
  fileSource,
  newClubBackupKey,
  restoreClubArchive,
  serverArchiveKey,
  takeClubSnapshot,
  verifyArchive,
  writeFileAtomic,
} from '../storage/backup/backup-archive.js';
import { deleteDocument, listDocuments } from '../storage/club/documents.js';
import { clubDir } from '../storage/club/club-store.js';
import { addDocument, addPerson, documentHashes, dumpClub, makeClubs, newStorage } from './backup-helpers.js';
import { tmpDir, findPlaintext } from './store-helpers.js';
import { waitUntil } from './helpers/daemon.js';
import { generateIdentity } from '../crypto/identity.js';

const tmp = tmpDir('commusic-backup-');
after(() => tmp.cleanup());

describe('backup archive', { timeout: 90_000 }, () => {
  it('a backup taken during a stream of writes restores one consistent moment; the change log verifies', async () => {
    const st = await newStorage(join(tmp.dir, 'concurrent'));
    const [club] = await makeClubs(st, 1);
    for (let i = 0; i < 50; i++) addPerson(st, club!, i);
    for (let i = 0; i < 5; i++) await addDocument(st, club!, randomBytes(100_000 + i));
    // Writer: a person plus change-log entry every tick, a document now and then, and deletions
    // of documents, until the archive is written.
    let stop = false;
    let n = 50;
    const writer = (async () => {
      while (!stop) {
        addPerson(st, club!, n++);
        if (n % 7 === 0) await addDocument(st, club!, randomBytes(50_000));
        if (n % 11 === 0) {
          const docs = listDocuments(st, club!);
          if (docs.length > 2) deleteDocument(st, club!, docs[0]!.id);
        }
        await new Promise((r) => setImmediate(r));
      }
    })();
    // The writer is running: wait for its first writes, not for a time.
    await waitUntil(() => n >= 60, 10_000, 'the writer to start');
    const key = { kind: 'server' as const, key: serverArchiveKey(st) };
    const snap = takeClubSnapshot(st, club!);
    // Taken in one synchronous step: this is the state of that moment.
    const atSnapshot = dumpClub(st, club!);
    const hashesAtSnapshot = await documentHashes(st, club!).catch(() => undefined);
    const { archiveStream, archiveSigner } = await import('../storage/backup/backup-archive.js');
    const file = join(tmp.dir, 'concurrent.cmbk');
    const nAtSnapshot = n;
    await writeFileAtomic(archiveStream(snap, key, { signer: archiveSigner(st) }), file);
    const nAtArchiveEnd = n;
    stop = true;
    await writer;
    assert.ok(nAtArchiveEnd > nAtSnapshot, 'writes went on while the archive was written');
    const personsAtEnd = (st.openClub(club!).db.prepare('SELECT count(*) AS n FROM persons').get() as { n: number }).n;
    assert.ok(personsAtEnd > (atSnapshot['persons'] as unknown[]).length, 'those writes reached the database');
    const report = await verifyArchive(fileSource(file), { serverKey: key.key, trust: archiveTrust(st) });
    assert.equal(report.auditChain?.intact, true);
    // Restore into a second club row of a fresh server (sharing the archive key and trusting its MAC) and compare with the snapshot moment.
    const st2 = await newStorage(join(tmp.dir, 'concurrent-target'));
    await restoreClubArchive(st2, club!, fileSource(file), { serverKey: key.key, trust: archiveTrust(st) });
    const restored = dumpClub(st2, club!, { skipAuditAfter: (atSnapshot['audit_log'] as unknown[]).length });
    assert.deepEqual(restored, atSnapshot);
    const persons = restored['persons'] as Array<{ id: number }>;
    const audit = restored['audit_log'] as unknown[];
    assert.equal(persons.length, audit.length, 'every person has its change-log entry: one moment');
    const v = verifyAuditLog(st2.openClub(club!).db, club!, undefined);
    assert.equal(v.entries, audit.length + 1, 'the restore itself is logged');
    assert.ok(v.ok || v.firstBad?.reason === 'no verifier given', JSON.stringify(v.firstBad));
    if (hashesAtSnapshot) {
      const after2 = await documentHashes(st2, club!);
      for (const [id, h] of Object.entries(after2)) if (hashesAtSnapshot[Number(id)]) assert.equal(h, hashesAtSnapshot[Number(id)]);
    }
    assert.deepEqual(Object.keys(await documentHashes(st2, club!)), (atSnapshot['documents'] as Array<{ id: number }>).map((d) => String(d.id)));
    assert.deepEqual(readdirSync(clubDir(st.dataDir, club!)).filter((f) => f.startsWith('.backup-')), [], 'staging links removed');
    st.close();
    st2.close();
  });

  it('backup then restore round-trips every row and document hash, in place and onto another server', async () => {
    const st = await newStorage(join(tmp.dir, 'roundtrip'));
    st.identity = generateIdentity();
    const [club] = await makeClubs(st, 1, 'premium');
    for (let i = 0; i < 200; i++) addPerson(st, club!, i);
    st.openClub(club!).db.prepare("INSERT INTO sepa_mandates (personId, iban, accountHolder, mandateReference, signedDate) VALUES (1, 'DE89370400440532013000', 'Anna', 'M-1', '2024-01-01')").run();
    const docs = [Buffer.alloc(0), randomBytes(1), randomBytes(300_000), randomBytes(1_100_000)];
    for (const d of docs) await addDocument(st, club!, d);
    const before = dumpClub(st, club!);
    const hashes = await documentHashes(st, club!);
    const key = { kind: 'server' as const, key: serverArchiveKey(st) };
    const file = join(tmp.dir, 'roundtrip.cmbk');
    const { manifest, stream } = createClubArchive(st, club!, key);
    await writeFileAtomic(stream, file);
    assert.equal(manifest.documents.length, 4);
    // No plaintext in the archive.
    assert.deepEqual(findPlaintext(tmp.dir, { iban: Buffer.from('DE89370400440532013000'), name: Buffer.from('First17') }).filter((h) => h.includes('roundtrip.cmbk')), []);
    // Change the live club, then restore: exactly the archived state comes back.
    for (let i = 0; i < 10; i++) addPerson(st, club!, 1000 + i);
    deleteDocument(st, club!, listDocuments(st, club!)[2]!.id);
    const r = await restoreClubArchive(st, club!, fileSource(file), { serverKey: key.key, trust: archiveTrust(st) }, { actor: 'ops-test', source: file, yes: true });
    assert.equal(r.documents, 4);
    assert.deepEqual(dumpClub(st, club!, { skipAuditAfter: (before['audit_log'] as unknown[]).length }), before);
    assert.deepEqual(await documentHashes(st, club!), hashes);
    const last = st.openClub(club!).db.prepare('SELECT "user", action FROM audit_log ORDER BY seq DESC LIMIT 1').get();
    assert.deepEqual({ ...(last as object) }, { user: 'ops-test', action: 'backup.restore' });
    // Old document files are gone; exactly the restored ones remain.
    assert.equal(readdirSync(join(clubDir(st.dataDir, club!), 'docs')).length, 4);
    // Another server (another master key): the club is created from the manifest.
    const other = await newStorage(join(tmp.dir, 'roundtrip-other'));
    other.identity = generateIdentity();
    const r2 = await restoreClubArchive(other, club!, fileSource(file), { serverKey: key.key, trust: archiveTrust(other, [st.identity.fingerprint]) });
    assert.equal(r2.origin.trustedAs, 'trusted-key');
    assert.equal(r2.createdClub, true);
    assert.equal(other.server.mustGetClub(club!).plan, 'premium');
    assert.deepEqual(dumpClub(other, club!, { skipAuditAfter: (before['audit_log'] as unknown[]).length }), before);
    assert.deepEqual(await documentHashes(other, club!), hashes);
    // A club passphrase archive opens with the passphrase and decrypts to a plain tar.
    const rec = await newClubBackupKey('correct horse battery staple', { log2N: 12 });
    const cfile = join(tmp.dir, 'roundtrip-club.cmbk');
    await writeFileAtomic(createClubArchive(st, club!, { kind: 'club', record: rec }).stream, cfile);
    await assert.rejects(verifyArchive(fileSource(cfile), { serverKey: key.key }), { code: 'WRONG_PASSPHRASE' });
    await assert.rejects(verifyArchive(fileSource(cfile), { passphrase: 'correct horse battery stapler' }), { code: 'WRONG_PASSPHRASE' });
    assert.equal((await verifyArchive(fileSource(cfile), { passphrase: 'correct horse battery staple', trust: archiveTrust(st) })).origin.trustedAs, 'this-server');
    const tar = join(tmp.dir, 'roundtrip.tar');
    const d = await decryptArchiveToFile(fileSource(cfile), { passphrase: 'correct horse battery staple' }, tar);
    assert.equal(d.documents, 4);
    assert.ok(readFileSync(tar).includes(Buffer.from('DE89370400440532013000')), 'the club gets its data in the clear');
    st.close();
    other.close();
  });

  it('a tampered or truncated archive is refused by verify and restore with a clear message; the live store stays', async () => {
    const st = await newStorage(join(tmp.dir, 'tamper'));
    const [club] = await makeClubs(st, 1);
    for (let i = 0; i < 100; i++) addPerson(st, club!, i);
    await addDocument(st, club!, randomBytes(700_000));
    const key = { serverKey: serverArchiveKey(st), trust: archiveTrust(st) };
    const file = join(tmp.dir, 'tamper.cmbk');
    await writeFileAtomic(createClubArchive(st, club!, { kind: 'server', key: key.serverKey }).stream, file);
    const good = readFileSync(file);
    for (let i = 0; i < 10; i++) addPerson(st, club!, 500 + i);
    const live = dumpClub(st, club!);
    const liveDocs = await documentHashes(st, club!);
    const flip = (at: number) => {
      const b = Buffer.from(good);
      b[at]! ^= 0x01;
      return b;
    };
    const headerEnd = 8 + good.readUInt16BE(6);
    const cases: Array<[string, Buffer, RegExp]> = [
      ['bit flip in the body', flip(Math.floor(good.length / 2)), /damaged or was tampered with/],
      ['bit flip in the last chunk', flip(good.length - 3), /damaged or was tampered with/],
      ['bit flip in the header JSON (time)', flip(good.indexOf('"createdAt":"') + 14), /header was altered/],
      ['bit flip in the header JSON (key id)', flip(good.indexOf('"keyId":"') + 10), /header was altered/],
      ['bit flip in the stream header', flip(headerEnd + 20), /damaged|tampered|altered/],
      ['truncated to half', good.subarray(0, Math.floor(good.length / 2)), /tampered|truncated/],
      ['truncated by one byte', good.subarray(0, good.length - 1), /tampered|truncated/],
      ['truncated to the header', good.subarray(0, headerEnd), /truncated/],
      ['empty', Buffer.alloc(0), /not a ComMusic backup archive/],
      ['garbage appended', Buffer.concat([good, randomBytes(100)]), /tampered|damaged/],
      ['other file', randomBytes(5000), /not a ComMusic backup archive/],
    ];
    for (const [what, bytes, msg] of cases) {
      const p = join(tmp.dir, 'bad.cmbk');
      writeFileSync(p, bytes);
      await assert.rejects(verifyArchive(fileSource(p), key), (e: Error & { code?: string }) => {
        assert.match(e.message, msg, `${what}: verify said ${e.message}`);
        assert.match(String(e.code), /^(ARCHIVE_|NOT_AN_ARCHIVE|WRONG_BACKUP_KEY)/, what);
        return true;
      });
      await assert.rejects(restoreClubArchive(st, club!, fileSource(p), key, { yes: true }), (e: Error) => {
        assert.match(e.message, msg, `${what}: restore said ${e.message}`);
        return true;
      });
      assert.deepEqual(dumpClub(st, club!), live, `${what}: live store untouched`);
      assert.deepEqual(await documentHashes(st, club!), liveDocs, `${what}: documents untouched`);
      assert.equal(existsSync(join(clubDir(st.dataDir, club!), 'club.db.restoring')), false);
    }
    assert.equal(readdirSync(join(clubDir(st.dataDir, club!), 'docs')).length, 1, 'no half-restored documents left');
    // The good one still restores.
    await restoreClubArchive(st, club!, Readable.from([good]), key, { yes: true });
    st.close();
  });
});
