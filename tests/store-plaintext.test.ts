// Must-show 1: no plaintext (personal data, bank data, document content, keys) anywhere under the
// data folder; a club store cannot be opened without its key; the right key opens it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import Database from 'better-sqlite3-multiple-ciphers';
import { randomBytes } from 'node:crypto';
import { openStorage } from '../storage/server/storage.js';
import { createClub } from '../storage/server/provisioning.js';
import { putDocument, readDocumentBuffer } from '../storage/club/documents.js';
import { clubDbPath } from '../storage/club/club-store.js';
import { openEncrypted } from '../storage/engine/sqlcipher.js';
import { clubPageKey } from '../crypto/wrap.js';
import { serverDbKey, serverDbPath } from '../storage/server/server-db.js';
import { unwrapClubKey } from '../storage/server/storage.js';
import { validatorFor } from '../storage/club/model.js';
import { toRow } from '../storage/club/schema.js';
import { findPlaintext, needleVariants, tmpDir } from './store-helpers.js';

const NAME = 'Quaxelbrotzky';
const FIRST = 'Wendelgard';
const IBAN = 'DE89370400440532013000';
const DOC = 'Ehrenurkunde fuer Wendelgard: streng vertraulicher Inhalt 7f3a9c';

for (const passphrase of ['korrekt pferd batterie heftklammer', undefined]) {
test(`no plaintext or key on disk; the store opens only with its key (${passphrase ? 'passphrase-wrapped' : 'plain'} key file)`, async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const st = await openStorage({ dataDir: dir, create: true, ...(passphrase ? { passphrase, scryptLog2N: 12 } : {}) });
  const { id, oneTimePassword } = await createClub(st, { name: 'Musikverein Plaintextprobe', adminUser: 'admin', plan: 'premium' });
  assert.ok(oneTimePassword && oneTimePassword.length >= 16);
  const store = st.openClub(id);
  const person = validatorFor('persons', 'create').parse({ firstName: FIRST, lastName: NAME, birthDate: '1990-04-01', city: 'Quaxelhausen', emails: ['wendelgard@example.org'], photoConsent: false, blocked: false });
  const cols = Object.keys(person);
  const pid = Number(store.db.prepare(`INSERT INTO persons (${cols.map((c) => `"${c}"`).join(',')}) VALUES (${cols.map((c) => '@' + c).join(',')})`).run(toRow('persons', person)).lastInsertRowid);
  const mandate = validatorFor('sepaMandates', 'create').parse({ personId: pid, iban: 'DE89 3704 0044 0532 0130 00', accountHolder: `${FIRST} ${NAME}`, mandateReference: 'MV-000001' });
  assert.equal(mandate.iban, IBAN);
  const mcols = Object.keys(mandate);
  st.openClub(id).db.prepare(`INSERT INTO sepa_mandates (${mcols.map((c) => `"${c}"`).join(',')}) VALUES (${mcols.map((c) => '@' + c).join(',')})`).run(toRow('sepaMandates', mandate));
  // A document big enough to span several chunks, with the marker in several places.
  const content = Buffer.concat([Buffer.from(DOC), randomBytes(200_000), Buffer.from(DOC)]);
  const info = await putDocument(st, id, Readable.from([content]), { kind: 'honour', name: 'urkunde.pdf' });
  assert.equal(info.size, content.length);
  assert.deepEqual(await readDocumentBuffer(st, id, info.id), content);

  const row = st.server.mustGetClub(id);
  const clubKey = unwrapClubKey(st.master, id, row.wrappedKey!, row.keyVersion);
  const masterKey = Buffer.from(st.master.key);
  const docRow = st.openClub(id).db.prepare('SELECT wrappedKey, file FROM documents').get() as { wrappedKey: Buffer; file: string };
  const docKey = st.openClub(id).unwrapDocumentKey(docRow.wrappedKey, docRow.file);
  st.close();

  const hits = findPlaintext(dir, {
    ...needleVariants('last name', NAME),
    ...needleVariants('first name', FIRST),
    ...needleVariants('IBAN', IBAN),
    ...needleVariants('IBAN tail', '0532013000'),
    ...needleVariants('document', DOC),
    'document random part': content.subarray(1000, 1064),
    ...needleVariants('master key', masterKey),
    ...needleVariants('club key', clubKey),
    ...needleVariants('club page key', clubPageKey(clubKey)),
    ...needleVariants('server db key', serverDbKey(masterKey)),
    ...needleVariants('document key', docKey),
  });
  // With a passphrase, no key exists anywhere in the clear. Without one, the master key file
  // (mode 0600, watched) is by design the only place holding a key, and only the master key.
  assert.deepEqual(hits, passphrase ? [] : [`${dir}/keys/master.key: master key (raw)`]);

  const path = clubDbPath(dir, id);
  // Without a key: SQLite sees no database.
  const plain = new Database(path, { fileMustExist: true });
  assert.throws(() => plain.prepare('SELECT * FROM persons').all(), /not a database|file is encrypted/i);
  plain.close();
  // With a wrong key or the master key itself: refused.
  assert.throws(() => openEncrypted(path, randomBytes(32)), (e: Error & { code?: string }) => e.code === 'WRONG_DATA_KEY');
  assert.throws(() => openEncrypted(path, masterKey), (e: Error & { code?: string }) => e.code === 'WRONG_DATA_KEY');
  assert.throws(() => openEncrypted(serverDbPath(dir), masterKey), (e: Error & { code?: string }) => e.code === 'WRONG_DATA_KEY');
  // The club data key itself is no page key (one key, one job); its page sub-key opens the store.
  assert.throws(() => openEncrypted(path, clubKey), (e: Error & { code?: string }) => e.code === 'WRONG_DATA_KEY');
  const db = openEncrypted(path, clubPageKey(clubKey));
  assert.equal((db.prepare('SELECT lastName FROM persons').get() as { lastName: string }).lastName, NAME);
  assert.equal((db.prepare('SELECT iban FROM sepa_mandates').get() as { iban: string }).iban, IBAN);
  db.close();
});
}
