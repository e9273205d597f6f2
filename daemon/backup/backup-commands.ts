/**
 * Client commands for backups:
 *   backup.setPassphrase {passphrase, currentPassphrase?, emails?}  club administrators only.
 *     The server derives the club's X25519 key pair from the passphrase (scrypt) and keeps only
 *     the public key and the KDF parameters; replacing a set passphrase needs the current one.
 *   backup.status {}  whether a passphrase is set, the mail addresses (backups:read).
 *   backup.download {}  streams a fresh archive of the club sealed with the club's passphrase
 *     key (backups:export, club-wide). The download is logged in the club's change log.
 * A missing right is a rights violation (reported to the ban engine) like every other command.
 */
import { z } from 'zod';
import { archiveSigner, archiveStream, checkClubPassphrase, clubBackupSettings, createClubArchive, newClubBackupKey, setClubBackupSettings } from '../../storage/backup/backup-archive.js';
import type { SnapshotPool } from '../../storage/backup/snapshot-pool.js';
import { BackupError } from '../../storage/backup/backup-errors.js';
import { appendAudit, requirePrincipal, revocable, type ClubServices, type Principal } from '../club/auth.js';
import { CommandError } from '../edge/command-errors.js';
import { keepRowAnswer } from '../edge/keyed-answer.js';
import type { CommandContext, Dispatcher } from '../edge/dispatcher.js';
import { effectiveScope, type Action } from '../club/rights.js';

export interface BackupCommandOptions {
  /** scrypt cost of new passphrase keys (tests lower it). */
  passphraseLog2N?: number;
  /**
   * The snapshot workers (the daemon's BackupService `snapshots`): backup.download takes its
   * snapshot there, off the event loop. Without it the snapshot is taken on this thread.
   */
  snapshots?: SnapshotPool;
}

function deny(services: ClubServices, ctx: CommandContext, p: Principal, command: string, right: string, detail = 'missing right'): never {
  services.violations.report({ ip: ctx.conn.ip, kind: 'rights', detail, time: Date.now(), club: p.clubId, user: p.user.username, command, right });
  throw new CommandError('FORBIDDEN', `you lack the right ${right}`);
}

function needClub(services: ClubServices, ctx: CommandContext, p: Principal, command: string, action: Action): void {
  const e = effectiveScope(p.grants, 'backups', action);
  if (!e || e.kind !== 'club') deny(services, ctx, p, command, `backups:${action}`, e ? 'club-wide right needed' : 'missing right');
}

export function registerBackupCommands(d: Dispatcher, services: ClubServices, o: BackupCommandOptions = {}): void {
  d.register({
    name: 'backup.setPassphrase',
    schema: z
      .object({
        passphrase: z.string().min(12, 'a backup passphrase has at least 12 characters').max(1024),
        currentPassphrase: z.string().max(1024).optional(),
        emails: z.array(z.string().email()).max(20).optional(),
      })
      .strict(),
    handler: async (a, ctx) => {
      let p = requirePrincipal(services, ctx);
      if (!p.user.isAdmin) deny(services, ctx, p, 'backup.setPassphrase', 'club administrator');
      const st = services.storage;
      const current = clubBackupSettings(st, p.clubId).passphrase;
      if (current) {
        if (a.currentPassphrase === undefined || !(await checkClubPassphrase(current, a.currentPassphrase))) throw new CommandError('FORBIDDEN', 'give the current backup passphrase to replace it');
      }
      const record = await newClubBackupKey(a.passphrase, o.passphraseLog2N !== undefined ? { log2N: o.passphraseLog2N } : {});
      p = requirePrincipal(services, ctx);
      const clubId = p.clubId;
      // The row's change and a keyed request's answer commit in one server.db transaction.
      const server = st.server.db;
      const result = server.transaction(() => {
        setClubBackupSettings(st, clubId, { passphrase: record, ...(a.emails ? { emails: a.emails } : {}) });
        return keepRowAnswer(server, clubId, { payload: { set: true, setAt: record.setAt } });
      }).immediate();
      appendAudit(services, p.store, { user: p.actor.user, ip: p.actor.ip, session: p.actor.session, action: 'backup.setPassphrase', entity: null, recordId: null, changes: { replaced: Boolean(current), ...(a.emails ? { emails: a.emails } : {}) } });
      return result;
    },
  });
  d.register({
    name: 'backup.status',
    schema: z.object({}).strict().default({}),
    handler: async (_a, ctx) => {
      const p = requirePrincipal(services, ctx);
      needClub(services, ctx, p, 'backup.status', 'read');
      const s = clubBackupSettings(services.storage, p.clubId);
      const plan = services.storage.server.mustGetClub(p.clubId).plan;
      return { payload: { passphraseSet: Boolean(s.passphrase), passphraseSetAt: s.passphrase?.setAt ?? null, emails: s.emails ?? [], nightlyMail: plan !== 'basic' } };
    },
  });
  d.register({
    name: 'backup.download',
    schema: z.object({}).strict().default({}),
    handler: async (_a, ctx) => {
      let p = requirePrincipal(services, ctx);
      needClub(services, ctx, p, 'backup.download', 'export');
      const rec = clubBackupSettings(services.storage, p.clubId).passphrase;
      if (!rec) throw new CommandError('CONFLICT', 'set a backup passphrase first (backup.setPassphrase); the download is encrypted with it');
      let archive;
      try {
        const st = services.storage;
        if (o.snapshots) {
          // The snapshot (store open, read transaction, inspection) on a worker thread.
          const snap = await o.snapshots.snapshot(st, p.clubId);
          archive = { manifest: snap.manifest, stream: archiveStream(snap, { kind: 'club', record: rec }, { signer: archiveSigner(st) }) };
          p = requirePrincipal(services, ctx); // after the wait: the session may have ended, the store moved in the cache
        } else {
          archive = createClubArchive(st, p.clubId, { kind: 'club', record: rec });
        }
      } catch (e) {
        if (e instanceof BackupError) throw new CommandError('INTERNAL', 'the backup could not be created; the service team was told');
        throw e;
      }
      appendAudit(services, p.store, { user: p.actor.user, ip: p.actor.ip, session: p.actor.session, action: 'backup.download', entity: null, recordId: null, changes: { createdAt: archive.manifest.createdAt, documents: archive.manifest.documents.length } });
      const m = archive.manifest;
      return {
        payload: { clubId: m.clubId, createdAt: m.createdAt, documents: m.documents.length, records: Object.values(m.tables).reduce((x, y) => x + y, 0), filename: `${m.clubId}-${m.createdAt.replace(/[-:.]/g, '').slice(0, 15)}.cmbk` },
        // Disabling the user or withdrawing backups:export ends the download (issue 19 point 7).
        download: revocable(services, ctx, archive.stream, (grants) => effectiveScope(grants, 'backups', 'export')?.kind === 'club'),
      };
    },
  });
}
