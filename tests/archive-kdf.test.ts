// Issue 20 point 4: an archive header is read before anything in it is authenticated, so its KDF
// parameters are accepted only as the server writes them; oversized ones are refused before any
// derivation (the error is ARCHIVE_INVALID, not the WRONG_PASSPHRASE a derivation would end in).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { checkPassphraseKdf, newClubBackupKey, verifyArchive, ARCHIVE_VERSION, PASSPHRASE_LOG2N } from '../storage/backup/backup-archive.js';
import { checkClubPassphrase } from '../storage/backup/backup-archive.js';

/** A club archive header ("CMBK" | 1 | kind 2 | len | JSON) with the given kdf, and some body bytes. */
function forged(kdf: unknown): Buffer {
  const json = Buffer.from(
    JSON.stringify({ v: ARCHIVE_VERSION, kind: 'club', clubId: 'c0123456789abcdef', createdAt: new Date().toISOString(), salt: randomBytes(16).toString('base64url'), clubPublicKey: randomBytes(32).toString('base64url'), ephemeralPublicKey: randomBytes(32).toString('base64url'), kdf }),
  );
  const pre = Buffer.alloc(8);
  pre.write('CMBK', 0, 'ascii');
  pre[4] = ARCHIVE_VERSION;
  pre[5] = 2;
  pre.writeUInt16BE(json.length, 6);
  return Buffer.concat([pre, json, randomBytes(4096)]);
}

const salt = randomBytes(16).toString('base64url');
const refused = (e: Error & { code?: string }) => e.code === 'ARCHIVE_INVALID' && /refused before any derivation/.test(e.message);

test('an archive with oversized KDF parameters is refused before any derivation (issue 20 point 4)', { timeout: 30_000 }, async () => {
  // The reviewer's forgery: 16 GiB and 2048x the work, accepted before.
  await assert.rejects(verifyArchive(Readable.from([forged({ salt, log2N: 22, r: 32, p: 16 })]), { passphrase: 'irgendeine Passphrase' }), refused);
  // Cheap but not a set the server writes: refused too (the old check derived, then said WRONG_PASSPHRASE).
  for (const kdf of [
    { salt, log2N: PASSPHRASE_LOG2N, r: 8, p: 2 },
    { salt, log2N: PASSPHRASE_LOG2N + 1, r: 8, p: 1 },
    { salt, log2N: 12, r: 16, p: 1 },
    { salt: 'x', log2N: 12, r: 8, p: 1 },
    { salt, log2N: 12.5, r: 8, p: 1 },
    { salt, log2N: '12', r: 8, p: 1 },
  ]) {
    await assert.rejects(verifyArchive(Readable.from([forged(kdf)]), { passphrase: 'irgendeine Passphrase' }), refused, JSON.stringify(kdf));
  }
});

test('the parameter sets the server writes pass the check, and a stored record with others is refused', async () => {
  const rec = await newClubBackupKey('eine lange Passphrase', { log2N: 10 });
  checkPassphraseKdf(rec);
  checkPassphraseKdf({ salt, log2N: PASSPHRASE_LOG2N, r: 8, p: 1 });
  assert.equal(await checkClubPassphrase(rec, 'eine lange Passphrase'), true);
  await assert.rejects(checkClubPassphrase({ ...rec, p: 4 }, 'eine lange Passphrase'), refused);
});
