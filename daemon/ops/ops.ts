import { z } from 'zod';
import { bansAdd, bansCheck, bansList, bansRemove, exemptAdd, exemptList, exemptRemove } from '../bans/ban-ops.js';
import { OperationError, OperationRegistry, type OpsContext } from './operations.js';
import { purgeDeletedClubArchives, registerBackupOps, type BackupOpsContext } from '../backup/backup-ops.js';
import { registerLogOps } from './log-ops.js';
import { BULK_BATCH } from '../club/club-bulk.js';
import { createClub, createClubsWithPasswords, deleteClub, listClubs, resumeClub, showClub, suspendClub } from '../../storage/server/provisioning.js';
import { recoverFromMasterLeak, rotateClub, rotateMaster } from '../../storage/server/key-rotation.js';
import type { SnapshotPool } from '../../storage/backup/snapshot-pool.js';
import { archiveKeyIds, forgetRetiredArchiveKeys, rotateArchiveKey } from '../../storage/backup/archive-keys.js';
import type { ClusterNode } from '../../cluster/node.js';
import { refuseInCluster, shareClubRow } from './cluster-guard.js';
import { abortIdentityRotation, identityStatus, retireIdentity, startIdentityRotation, switchIdentity } from '../../crypto/identity-keyring.js';
import { dataPaths } from '../main/config.js';

/** Every operator operation, registered once (the context type lives in operations.ts). */
export type { OpsContext } from './operations.js';

function needCluster(c: OpsContext): ClusterNode {
  const node = c.cluster?.();
  if (!node) throw new OperationError('NOT_IN_CLUSTER', 'cluster commands need the running daemon of a cluster member (commusicd with --cluster-etcd)');
  return node;
}

/** Why a key rotation is refused on a cluster member (docs/CLUSTER.md "Not yet built"). */
const KEYS_SHARED = "the cluster's log, replicas and registry records are sealed under keys derived from the current one";

async function shared<T>(c: OpsContext, club: string, result: T): Promise<T> {
  await shareClubRow(c, club);
  return result;
}

/** The steps of `keys rotate-identity` (crypto/identity-keyring.ts has the phases). */
const IDENTITY_STEPS = { start: startIdentityRotation, switch: switchIdentity, retire: retireIdentity, abort: (p: string) => abortIdentityRotation(p) } as const;

const address = z.string().min(1).max(64);
const clubId = z.string().min(1).max(64).regex(/^[A-Za-z0-9_-]+$/, 'not a club id');
const clubName = z.string().trim().min(1).max(200);
const userName = z.string().trim().min(1).max(64).regex(/^[\p{L}\p{N}._@-]+$/u, 'letters, digits and . _ @ - only');

/** Registers every operator operation (bans, clubs, keys, backups, log) on the registry. */
export function buildOperations<C extends OpsContext>(registry = new OperationRegistry<C>()): OperationRegistry<C> {
  registry
    .register({ name: 'bans.list', schema: z.object({}).strict(), run: async (c) => bansList({ table: await c.bans() }) })
    .register({
      name: 'bans.add',
      schema: z.object({ address, duration: z.string().min(1).max(16), reason: z.string().min(1).max(200), force: z.boolean().optional(), yes: z.boolean().optional() }).strict(),
      run: async (c, a) => {
        const table = await c.bans();
        const ban = bansAdd({ table }, a);
        c.bansChanged?.();
        // a cluster member shares the ban with every server (cluster/ban-board.ts)
        const entry = c.cluster?.() ? table.list(Date.now()).find((b) => b.address === ban.address) : undefined;
        if (entry) await c.cluster!()!.bans.publish({ address: entry.address, untilMs: entry.expires, reason: entry.reason });
        return ban;
      },
    })
    .register({
      name: 'bans.remove',
      schema: z.object({ address }).strict(),
      run: async (c, a) => {
        const r = bansRemove({ table: await c.bans() }, a);
        if (r.removed) await c.cluster?.()?.bans.lift(r.address);
        return r;
      },
    })
    .register({ name: 'bans.check', schema: z.object({ address }).strict(), run: async (c, a) => bansCheck({ table: await c.bans() }, a) })
    .register({ name: 'bans.exempt.list', schema: z.object({}).strict(), run: async (c) => exemptList({ table: await c.bans() }) })
    .register({
      name: 'bans.exempt.add',
      schema: z.object({ address, note: z.string().max(200).optional() }).strict(),
      run: async (c, a) => exemptAdd({ table: await c.bans() }, a),
    })
    .register({ name: 'bans.exempt.remove', schema: z.object({ address }).strict(), run: async (c, a) => exemptRemove({ table: await c.bans() }, a) });
  registry
    .register({
      name: 'club.create',
      schema: z
        .object({ name: clubName, admin: userName, plan: z.enum(['basic', 'premium', 'federation']).default('basic'), password: z.string().min(12).max(1024).optional() })
        .strict(),
      run: async (c, a) => {
        // In a cluster the club's primary creates its store; this member registers the club.
        const node = c.cluster?.();
        const r = await createClub(await c.storage(), { name: a.name, adminUser: a.admin, plan: a.plan, ...(a.password ? { adminPassword: a.password } : {}), ...(node ? { materialize: false } : {}) });
        if (node) await node.registerClub(r.id);
        return r;
      },
    })
    .register({
      name: 'club.create-bulk',
      schema: z
        .object({
          clubs: z
            .array(z.object({ name: clubName, admin: userName, plan: z.enum(['basic', 'premium', 'federation']).default('basic') }).strict())
            .min(1)
            .max(BULK_BATCH),
        })
        .strict(),
      run: async (c, a) => {
        // In a cluster, as club.create: the clubs are registered; each one's primary creates its store (stores are made on first use).
        const node = c.cluster?.();
        const r = await createClubsWithPasswords(await c.storage(), a.clubs.map((x) => ({ name: x.name, adminUser: x.admin, plan: x.plan })));
        if (node) for (const x of r) await node.registerClub(x.id);
        return r;
      },
    })
    .register({ name: 'club.list', schema: z.object({}).strict(), run: async (c) => listClubs(await c.storage()) })
    .register({ name: 'club.show', schema: z.object({ id: clubId }).strict(), run: async (c, a) => showClub(await c.storage(), a.id) })
    // In a cluster the changed row goes to every member through the registry record.
    .register({ name: 'club.suspend', schema: z.object({ id: clubId }).strict(), run: async (c, a) => shared(c, a.id, suspendClub(await c.storage(), a.id)) })
    .register({ name: 'club.resume', schema: z.object({ id: clubId }).strict(), run: async (c, a) => shared(c, a.id, resumeClub(await c.storage(), a.id)) })
    .register({
      name: 'club.delete',
      schema: z.object({ id: clubId, configFile: z.string().min(1).max(4096).optional() }).strict(),
      run: async (c, a) => {
        const node = c.cluster?.();
        const r = await deleteClub(await c.storage(), a.id);
        // every member deletes its copy when the registry record goes; etcd's history is compacted
        if (node) await node.forgetClub(a.id);
        return { ...r, archives: await purgeDeletedClubArchives(c, a.id, a.configFile) };
      },
    })
    .register({
      name: 'keys.rotate-master',
      schema: z.object({ passphrase: z.string().min(1).max(1024).optional(), rekeyClubs: z.boolean().optional() }).strict(),
      run: async (c, a) => {
        await refuseInCluster(c, a.rekeyClubs ? 'keys rotate-master --rekey-clubs' : 'keys rotate-master', 'all', KEYS_SHARED);
        const st = await c.storage();
        const pass = { ...(st.master.passphraseProtected ? { passphrase: requirePassphrase(a.passphrase) } : {}), ...(await rotationWorkers(c)) };
        if (a.rekeyClubs) {
          return recoverFromMasterLeak(st, { ...pass, ...(c.expectKeyChange ? { wrapMaster: <T>(fn: () => Promise<T>) => c.expectKeyChange!(fn) } : {}) });
        }
        const rotate = () => rotateMaster(st, pass);
        return c.expectKeyChange ? c.expectKeyChange(rotate) : rotate();
      },
    })
    .register({ name: 'cluster.status', schema: z.object({}).strict(), run: async (c) => needCluster(c).status() })
    .register({
      name: 'cluster.drain',
      schema: z.object({ id: z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/, 'not a node id'), drained: z.boolean() }).strict(),
      run: async (c, a) => {
        await needCluster(c).drain(a.id, a.drained);
        return { id: a.id, drained: a.drained };
      },
    })
    .register({
      name: 'keys.rotate-club',
      schema: z.object({ id: clubId }).strict(),
      run: async (c, a) => {
        await refuseInCluster(c, 'keys rotate-club', [a.id], KEYS_SHARED);
        return rotateClub(await c.storage(), a.id, await rotationWorkers(c));
      },
    })
    .register({
      name: 'keys.rotate-archive',
      schema: z.object({}).strict(),
      run: async (c) => {
        const r = rotateArchiveKey(await c.storage());
        // Cluster: every member adopts the new keyring (docs/CLUSTER.md "Backups").
        await (await (c as BackupOpsContext).backups?.())?.scope?.keysRotated();
        return r;
      },
    })
    .register({ name: 'keys.archive-keys', schema: z.object({}).strict(), run: async (c) => archiveKeyIds(await c.storage()) })
    .register({
      name: 'keys.forget-archive-keys',
      schema: z.object({ ids: z.array(z.string().regex(/^[0-9a-f]{16}$/, 'not an archive key id')).max(4096).optional() }).strict(),
      run: async (c, a) => {
        // Cluster: forget on the shared keyring as it is now, then every member forgets too.
        const scope = (await (c as BackupOpsContext).backups?.())?.scope;
        scope?.syncKeys();
        const r = forgetRetiredArchiveKeys(await c.storage(), a.ids);
        await scope?.keysForgotten();
        return r;
      },
    })
    .register({
      name: 'keys.rotate-identity',
      schema: z.object({ step: z.enum(['start', 'switch', 'retire', 'abort']) }).strict(),
      run: async (c, a) => {
        const path = dataPaths(c.dataDir).identityKey;
        const step = async () => IDENTITY_STEPS[a.step](path, Date.now());
        const r = c.expectKeyChange ? await c.expectKeyChange(step) : await step();
        const told = c.identityChanged?.();
        return { ...r, ...(told !== undefined ? { sessionsNotified: told } : {}) };
      },
    })
    .register({ name: 'keys.identity-status', schema: z.object({}).strict(), run: async (c) => identityStatus(dataPaths(c.dataDir).identityKey) });
  registerLogOps(registry);
  registerBackupOps(registry);
  return registry;
}

/** The daemon's storage workers (shared with backups) for a rotation's copies; offline none (one for the call). */
async function rotationWorkers(c: OpsContext): Promise<{ workers?: SnapshotPool }> {
  const svc = await (c as BackupOpsContext).backups?.();
  return svc ? { workers: svc.snapshots } : {};
}

function requirePassphrase(p: string | undefined): string {
  if (p === undefined) throw new OperationError('PASSPHRASE_REQUIRED', 'the master key is passphrase-protected; give the passphrase with --passphrase-fd');
  return p;
}
