/**
 * Backup archives: one file per club and moment (docs/BACKUPS.md has the format).
 *
 *   header  "CMBK" | version 2 | kind (1 server, 2 club) | uint16be n | n bytes of JSON
 *   body    crypto/chunked-aead.ts stream (AES-256-GCM, chunk index + final flag in the nonce)
 *           of a plain ustar file: manifest.json, origin.json, club.sqlite, documents/<id>
 *
 * origin.json proves who made the archive (storage/backup/archive-origin.ts): a signature with the
 * server identity key (or a MAC under a key only this server holds) over the header and the
 * manifest, which carries the SHA-256 of the image and of every document. Every reader path
 * (verify, restore) refuses an archive whose origin does not verify.
 *
 * The stream key is HKDF-SHA256(ikm, salt = SHA-256(header bytes), "commusic/backup/v1/stream"),
 * so the header is authenticated too: change one byte of it and the body no longer opens.
 *   - server archives (nightly, to the destinations): ikm = the server archive key, a random
 *     256-bit key kept in server.db (which is page-encrypted under the master key; master
 *     rotation carries it along). The header names it by key id.
 *   - club archives (mailed, downloaded): ikm = X25519(ephemeral, club public key). The club's
 *     key pair is derived from its backup passphrase with scrypt; the server stores only the
 *     public key and the scrypt salt/parameters, which is how it encrypts nightly without knowing
 *     the passphrase, and how it checks a passphrase (derive, compare public keys).
 *
 * The body holds plaintext (club.sqlite is a plain SQLite image, documents are decrypted), so an
 * archive restores on any server: restore re-encrypts everything under the target's club key.
 * Nothing plaintext touches the disk while an archive is written: the snapshot is an in-memory
 * image (sqlite3_serialize, one read transaction) and the documents stream from their encrypted
 * files through decryption straight into the archive encryption.
 *
 * storage/backup/: the backup archive format and everything that reads or writes it. This file is
 * its public face; the work is in archive-format.ts (header, manifest), club-backup-keys.ts
 * (sealing keys, passphrase), archive-writer.ts, archive-reader.ts (walk, verify, decrypt) and
 * archive-restore.ts, on backup-tar.ts, archive-origin.ts, archive-keys.ts and restore-schema.ts.
 */
export { ARCHIVE_MAGIC, ARCHIVE_VERSION, ARCHIVE_SUFFIX, MANIFEST_FORMAT, openImage, inspectImage, type ArchiveHeader, type ManifestDocument, type Manifest, type ClubSnapshot } from './archive-format.js';
export { serverArchiveKey, PASSPHRASE_LOG2N, PASSPHRASE_R, PASSPHRASE_P, MIN_PASSPHRASE_LENGTH, PASSPHRASE_MIN_LOG2N, checkPassphraseKdf, newClubBackupKey, checkClubPassphrase, clubBackupSettings, setClubBackupSettings, archiveSigner, archiveTrust, type ClubBackupKeyRecord, type ClubBackupSettings, type SealKey, type OpenKey } from './club-backup-keys.js';
export { takeClubSnapshot, sweepBackupStaging, archiveStream, createClubArchive, writeFileAtomic } from './archive-writer.js';
export { walkArchive, fileSource, verifyArchive, decryptArchiveToFile, type OriginEntrySeen, type ArchiveVisitor, type VerifyReport } from './archive-reader.js';
export { preRestoreDir, planClubRestore, restoreClubArchive, type RestoreOptions, type RestorePlan, type RestoreReport } from './archive-restore.js';

export { BackupError } from './backup-errors.js';
