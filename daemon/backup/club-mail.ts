/**
 * The nightly backup mail of premium and federation clubs: an archive sealed with the club's
 * passphrase key, mailed when the data changed since the last one, or a notice when it is too
 * large for e-mail. Run by BackupService.mailClubBackups.
 */
import type { AlertKind } from '../mail/alert-catalogue.js';
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { archiveSigner, archiveStream, clubBackupSettings, takeClubSnapshot, writeFileAtomic, type ClubSnapshot, type Manifest } from '../../storage/backup/backup-archive.js';
import type { Storage } from '../../storage/server/storage.js';
import { type Logger } from '../common/log.js';
import type { AlertMailer } from '../mail/mailer.js';
import { MAIL_PLANS, MailReport, emptyMail, errText, mb } from './backup-settings.js';

/** What the club mail needs from the backup service. */
export interface ClubMailDeps {
  readonly st: Storage;
  readonly mailer: AlertMailer;
  readonly log: Logger;
  readonly now: () => Date;
  /** Folder for the archive while it is mailed (removed after). */
  readonly staging: string;
  /** Largest archive attached, bytes (backups.mail.maxBytes). */
  readonly maxBytes: number;
  readonly alert: (kind: AlertKind, severity: 'warning' | 'critical', subject: string, lines: string[]) => Promise<void>;
  /** A club's snapshot (the backup service's worker thread); default takeClubSnapshot on this thread. */
  readonly snapshot?: (clubId: string, now: Date) => Promise<ClubSnapshot>;
}

/**
 * Mails each premium/federation club (or those in `only`) with addresses and a passphrase its
 * archive when the data fingerprint differs from the last mailed one.
 */
export async function mailClubBackups(d: ClubMailDeps, only?: readonly string[]): Promise<MailReport> {
  const rep = emptyMail();
  const st = d.st;
  for (const row of st.server.listClubs()) {
    if (only && !only.includes(row.id)) continue;
    if (!MAIL_PLANS.has(row.plan) || row.status !== 'active') continue;
    const cfg = clubBackupSettings(st, row.id);
    if (!cfg.emails?.length) {
      rep.noAddress.push(row.id);
      continue;
    }
    if (!cfg.passphrase) {
      rep.noPassphrase.push(row.id);
      continue;
    }
    const metaKey = `backup.mailed.${row.id}`;
    let file: string | undefined;
    try {
      const snap = d.snapshot ? await d.snapshot(row.id, d.now()) : takeClubSnapshot(st, row.id, d.now());
      if (st.server.getMeta(metaKey) === snap.manifest.dataFingerprint) {
        snap.release();
        rep.unchanged.push(row.id);
        continue;
      }
      const manifest: Manifest = snap.manifest;
      mkdirSync(d.staging, { recursive: true, mode: 0o700 });
      file = path.join(d.staging, `mail-${row.id}-${randomBytes(6).toString('hex')}.cmbk`);
      await writeFileAtomic(archiveStream(snap, { kind: 'club', record: cfg.passphrase }, { signer: archiveSigner(st) }), file);
      const size = statSync(file).size;
      const day = manifest.createdAt.slice(0, 10);
      if (size > d.maxBytes) {
        await d.mailer.send({
          group: 'club-backup',
          to: cfg.emails,
          subject: `ComMusic: backup of ${row.name} of ${day} is too large for e-mail`,
          text: [
            `The nightly backup of ${row.name} (${day}) is ${mb(size)} MB, above the e-mail limit of ${mb(d.maxBytes)} MB, so it was not attached.`,
            'Your data is backed up on our servers as every night. Download a backup at any time in the ComMusic application (Backup > Download); it is encrypted with your backup passphrase.',
          ].join('\n\n'),
        });
        await d.alert('backup-mail-too-large', 'warning', `nightly backup mail of club ${row.id} over the size limit`, [`Club: ${row.id}`, `Archive: ${mb(size)} MB, limit ${mb(d.maxBytes)} MB`, 'The club got a notice instead of the archive.']);
        rep.tooLarge.push(row.id);
      } else {
        await d.mailer.send({
          group: 'club-backup',
          to: cfg.emails,
          subject: `ComMusic: nightly backup of ${row.name} (${day})`,
          text: [
            `Attached is the encrypted backup of ${row.name} of ${manifest.createdAt}: ${Object.values(manifest.tables).reduce((a, b) => a + b, 0)} records and ${manifest.documents.length} documents.`,
            'It opens only with your club\'s backup passphrase: commusicctl backup decrypt --in FILE --out FILE.tar --passphrase-stdin, or in the ComMusic application.',
            'We send it only on nights after your data changed.',
          ].join('\n\n'),
          attachments: [{ filename: `${row.id}-${manifest.createdAt.replace(/[-:.]/g, '').slice(0, 15)}.cmbk`, path: file, contentType: 'application/octet-stream' }],
        });
        rep.sent.push(row.id);
      }
      // Durably queued (or noticed): the next mail waits for the next change.
      st.server.setMeta(metaKey, manifest.dataFingerprint);
    } catch (e) {
      rep.failed.push({ clubId: row.id, error: errText(e) });
      d.log.error('nightly backup mail failed', { event: 'backup-mail', clubId: row.id, error: errText(e) });
    } finally {
      if (file) rmSync(file, { force: true });
    }
  }
  return rep;
}
