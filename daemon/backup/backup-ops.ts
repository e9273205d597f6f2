/**
 * Operator operations for backups (`commusicctl backup ...`), online on the daemon's control
 * socket or offline on the data folder. Online, the daemon's own BackupService (with its
 * destinations and mailer) runs them; offline a service is built from the configuration file
 * (`configFile`, else COMMUSIC_CONFIG, else the embedded default) for the one call.
 *
 * Archive references (`from`): a file path, or `DESTINATION:NAME` as `backup list` prints it,
 * or `DESTINATION:latest` (with the club id) for the newest archive of the club there.
 */
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { generateIdentity, loadIdentity, saveIdentity } from '../../crypto/identity.js';
import { openStorage } from '../../storage/server/storage.js';
import { assertSafeDataDir } from '../main/folder-safety.js';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { z } from 'zod';
import { archiveKeyFor } from '../../storage/backup/archive-keys.js';
import { archiveTrust, clubBackupSettings, fileSource, planClubRestore, restoreClubArchive, serverArchiveKey, setClubBackupSettings, verifyArchive, type OpenKey } from '../../storage/backup/backup-archive.js';
import { identityKeyPath, parseTrustKeys } from '../../storage/backup/archive-origin.js';
import { BackupError } from '../../storage/backup/backup-errors.js';
import type { Storage } from '../../storage/server/storage.js';
import { BackupService } from './backup-service.js';
import { loadConfig } from '../main/config.js';
import { AlertMailer } from '../mail/mailer.js';
import type { OperationRegistry } from '../ops/operations.js';
import type { OpsContext } from '../ops/operations.js';
import { refuseInCluster, shareClubRow } from '../ops/cluster-guard.js';

export interface BackupOpsContext extends OpsContext {
  /** Online: the daemon's running backup service. */
  backups?(): Promise<BackupService>;
}

const clubId = z.string().min(1).max(64).regex(/^[a-z0-9][a-z0-9-]{0,63}$/, 'not a club id');
const configFile = z.string().min(1).max(4096).optional();
const passphrase = z.string().min(1).max(1024).optional();

async function withService<T>(c: OpsContext, cfgFile: string | undefined, fn: (svc: BackupService, st: Storage) => Promise<T>): Promise<T> {
  const st = await c.storage();
  const online = (c as BackupOpsContext).backups;
  if (online) {
    const svc = await online();
    // Cluster: archives of any member open here once the shared keys are in server.db.
    svc.scope?.syncKeys();
    return fn(svc, st);
  }
  const file = cfgFile ?? process.env['COMMUSIC_CONFIG'];
  const cfg = loadConfig({ ...(file ? { file } : {}), flags: { dataDir: c.dataDir } });
  const mailer = await AlertMailer.open({ dataDir: c.dataDir, config: cfg.mail });
  const svc = new BackupService({ storage: st, config: cfg.backups, mailer });
  try {
    return await fn(svc, st);
  } finally {
    await svc.close();
    await mailer.flush().catch(() => undefined);
    await mailer.close();
  }
}

/** Resolve `from` to a readable source. */
async function openSource(svc: BackupService, from: string, club?: string): Promise<{ source: Readable; label: string }> {
  const m = /^([A-Za-z0-9_.-]{1,40}):(.+)$/.exec(from);
  if (m && svc.destinations.some((d) => d.name === m[1])) {
    const d = svc.destination(m[1]!);
    let name = m[2]!;
    if (name === 'latest') {
      if (!club) throw new BackupError('NOT_FOUND', `${from}: "latest" needs --club`);
      const list = await d.list(club);
      if (!list.length) throw new BackupError('NOT_FOUND', `destination ${d.name} has no archive of club ${club}`);
      name = list[list.length - 1]!.name;
    }
    return { source: await d.get(name), label: `${d.name}:${name}` };
  }
  const p = path.resolve(from);
  if (!existsSync(p)) throw new BackupError('NOT_FOUND', `no archive file ${p} and no destination named "${from.split(':')[0]}"`);
  return { source: fileSource(p), label: p };
}

/** Keys that open an archive here, and whose origin is accepted: this server's own, plus the keys the operator named. */
function openKey(st: Storage, pass: string | undefined, trustKeys: readonly string[] = []): OpenKey {
  return { serverKey: serverArchiveKey(st), serverKeyring: (id, club) => archiveKeyFor(st, id, club), ...(pass !== undefined ? { passphrase: pass } : {}), trust: archiveTrust(st, parseTrustKeys(trustKeys)) };
}

const trustKeys = z.array(z.string().min(1).max(4096)).max(16).optional();
/** Who ran the command, as commusicctl reports it (OS account, and the account behind sudo). */
const operator = z
  .object({ user: z.string().min(1).max(64).regex(/^[\p{L}\p{N}._@$-]+$/u), sudoUser: z.string().min(1).max(64).regex(/^[\p{L}\p{N}._@$-]+$/u).optional(), uid: z.number().int().min(0).optional() })
  .strict()
  .optional();

/**
 * `--target DIR`: a separate data folder to restore into, so the live club is not touched (as
 * restic and etcd restore into a directory). Created when missing (mode 0700, its own master key
 * and identity key, as `keys init` makes them); an existing one must be a data folder. Checked
 * like the daemon's own (folder-safety.ts). Never the live data folder.
 */
async function openTarget(liveDir: string, dir: string): Promise<{ dir: string; storage: Storage; fingerprint: string }> {
  const abs = path.resolve(dir);
  if (abs === path.resolve(liveDir)) throw new BackupError('NOT_FOUND', '--target is the live data folder; leave it out to restore in place');
  if (existsSync(abs) && readdirSync(abs).length > 0 && !existsSync(path.join(abs, 'keys', 'master.key'))) throw new BackupError('NOT_FOUND', `--target ${abs} is neither empty nor a ComMusic data folder`);
  mkdirSync(abs, { recursive: true, mode: 0o700 });
  assertSafeDataDir(abs);
  const idPath = identityKeyPath(abs);
  const identity = existsSync(idPath) ? loadIdentity(idPath) : generateIdentity();
  if (!existsSync(idPath)) saveIdentity(idPath, identity);
  const storage = await openStorage({ dataDir: abs, create: true });
  storage.identity = identity;
  return { dir: abs, storage, fingerprint: identity.fingerprint };
}

/** The restore entry's user: "operator:alice" or "operator:root (sudo by alice)". */
export function operatorName(o: { user: string; sudoUser?: string | undefined } | undefined): string {
  if (!o) return 'operator:unnamed';
  return `operator:${o.user}${o.sudoUser && o.sudoUser !== o.user ? ` (sudo by ${o.sudoUser})` : ''}`.slice(0, 160);
}

/**
 * After `club delete`: remove the club's archives at every destination (online through the
 * daemon's service, offline through one built from the configuration). Best effort: the club's
 * archive key is already destroyed, so what a down destination keeps opens nowhere.
 */
export async function purgeDeletedClubArchives(c: OpsContext, clubId: string, cfgFile?: string): Promise<{ removed: number; destinations: string[]; failed: Array<{ destination: string; error: string }> }> {
  return withService(c, cfgFile, async (svc) => {
    const r = await svc.purgeClubArchives(clubId);
    return { removed: r.removed.length, destinations: [...new Set(r.removed.map((x) => x.destination))], failed: r.failed };
  });
}

export function registerBackupOps<C extends OpsContext>(registry: OperationRegistry<C>): OperationRegistry<C> {
  return registry
    .register({
      name: 'backup.clubs',
      schema: z.object({}).strict(),
      run: async (c) => {
        const all = (await c.storage()).server.listClubs().filter((r) => r.status !== 'deleting').map((r) => r.id);
        // Cluster: `backup run --all` covers the clubs this member is primary of (docs/CLUSTER.md "Backups").
        const scope = (await (c as BackupOpsContext).backups?.())?.scope;
        return scope ? scope.mine(all) : all;
      },
    })
    .register({
      name: 'backup.run',
      schema: z.object({ clubs: z.array(clubId).max(100_000).optional(), finish: z.boolean().default(false), configFile }).strict(),
      run: async (c, a) =>
        withService(c, a.configFile, async (svc) => {
          if (a.finish) {
            // After a per-club run of all clubs: retention everywhere and the club mails.
            const mine = svc.scope?.mine((await c.storage()).server.listClubs().map((r) => r.id));
            const retention = await svc.applyRetention(mine ? { clubs: mine } : {});
            const mail = await svc.mailClubBackups(mine);
            return { retention, mail };
          }
          return svc.runNightly({ ...(a.clubs ? { clubs: a.clubs } : {}), ...(a.clubs ? { mail: false, retention: false } : {}) });
        }),
    })
    .register({
      // Online only (the daemon's run); without a daemon no run can be going on another process's behalf.
      name: 'backup.cancel',
      schema: z.object({}).strict(),
      run: async (c) => {
        const online = (c as BackupOpsContext).backups;
        if (!online) return { running: false, via: 'offline' };
        return { ...(await online()).cancel(), via: 'daemon' };
      },
    })
    .register({
      name: 'backup.list',
      schema: z.object({ club: clubId.optional(), destination: z.string().max(40).optional(), configFile }).strict(),
      run: async (c, a) =>
        withService(c, a.configFile, async (svc) => {
          const out: Array<{ destination: string; name?: string; clubId?: string; time?: string; size?: number; error?: string }> = [];
          for (const d of svc.destinations) {
            if (a.destination && d.name !== a.destination) continue;
            try {
              for (const e of await d.list(a.club)) out.push({ destination: d.name, name: e.name, clubId: e.clubId, time: e.time.toISOString(), size: e.size });
            } catch (e) {
              out.push({ destination: d.name, error: (e as Error).message });
            }
          }
          const deletedClubs = (c.storage ? (await c.storage()).server.listDeletions() : [])
            .filter((x) => !a.club || x.clubId === a.club)
            .map((x) => ({ clubId: x.clubId, deletedAt: x.deletedAt, archiveKey: 'destroyed', archivesRemoved: x.archivesRemoved, ...x.report }));
          return { archives: out, deletedClubs, lastBackups: Object.fromEntries(svc.lastBackups().map(([d, t]) => [d, new Date(t).toISOString()])), gaps: svc.gaps() };
        }),
    })
    .register({
      name: 'backup.verify',
      schema: z.object({ from: z.string().min(1).max(4096), club: clubId.optional(), passphrase, trustKeys, configFile }).strict(),
      run: async (c, a) =>
        withService(c, a.configFile, async (svc, st) => {
          const key = openKey(st, a.passphrase, a.trustKeys);
          const { source, label } = await openSource(svc, a.from, a.club);
          return { archive: label, ...(await verifyArchive(source, key)) };
        }),
    })
    .register({
      name: 'backup.restore',
      schema: z
        .object({ club: clubId, from: z.string().min(1).max(4096), passphrase, trustKeys, operator, dryRun: z.boolean().default(false), yes: z.boolean().default(false), target: z.string().min(1).max(4096).optional(), configFile })
        .strict(),
      run: async (c, a) => {
        // Into a cluster member's own data folder: the restored store would not be in the club's
        // replicated log (restore into --target, a separate folder, is fine).
        if (a.target === undefined && !a.dryRun) await refuseInCluster(c, 'backup restore into a cluster member', [a.club], "a restored store is not in the club's replicated log; restore with --target into a separate folder");
        return withService(c, a.configFile, async (svc, st) => {
          if (a.target === undefined && !a.dryRun) svc.scope?.check(a.club, 'restore');
          const key = openKey(st, a.passphrase, a.trustKeys);
          const target = a.target !== undefined ? await openTarget(c.dataDir, a.target) : undefined;
          const into = target?.storage ?? st;
          const { source, label } = await openSource(svc, a.from, a.club);
          try {
            const where = target ? { target: target.dir, targetFingerprint: target.fingerprint } : {};
            if (a.dryRun) return { archive: label, ...where, ...(await planClubRestore(into, a.club, source, key)) };
            return { archive: label, ...where, ...(await restoreClubArchive(into, a.club, source, key, { actor: operatorName(a.operator), source: label, yes: a.yes, snapshots: svc.snapshots })) };
          } finally {
            source.destroy();
            target?.storage.close();
          }
        });
      },
    })
    .register({
      name: 'backup.set-mail',
      schema: z.object({ club: clubId, emails: z.array(z.string().email()).max(20) }).strict(),
      run: async (c, a) => {
        const st = await c.storage();
        const s = setClubBackupSettings(st, a.club, { emails: a.emails });
        await shareClubRow(c, a.club); // in a cluster every member gets the changed row
        return { club: a.club, emails: s.emails ?? [], passphraseSet: Boolean(s.passphrase) };
      },
    })
    .register({
      name: 'backup.show',
      schema: z.object({ club: clubId }).strict(),
      run: async (c, a) => {
        const st = await c.storage();
        const row = st.server.mustGetClub(a.club);
        const s = clubBackupSettings(st, a.club);
        return { club: a.club, plan: row.plan, emails: s.emails ?? [], passphraseSet: Boolean(s.passphrase), passphraseSetAt: s.passphrase?.setAt ?? null, lastMailed: st.server.getMeta(`backup.mailed.${a.club}`) ? 'yes' : 'never' };
      },
    });
}
