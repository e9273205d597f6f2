/**
 * Club provisioning and key rotation: plain async functions over an open Storage (see
 * storage/server/storage.ts), used by the running daemon (control socket) and offline by commusicctl
 * alike. Inputs and results are JSON-serialisable.
 *
 * Usage (offline; the daemon keeps one Storage open and passes it instead):
 *
 *   const st = await openStorage({ dataDir, passphrase });        // or { create: true } to init
 *   const { id, oneTimePassword } = await createClub(st, { name: 'MV Beispiel', adminUser: 'anna', plan: 'premium' });
 *   listClubs(st); showClub(st, id); suspendClub(st, id); resumeClub(st, id);
 *   await deleteClub(st, id);                                      // crypto-shreds first
 *   await rotateMaster(st);  await rotateClub(st, id);             // resumable after kill -9
 *   await resumeInterruptedRotations(st);                          // finish whatever was cut off
 *   st.close();
 *
 * `commusicctl club create NAME --admin USER [--plan P] [--password-stdin]` maps to createClub
 * (adminPassword from stdin, otherwise a one-time password is returned and printed once);
 * `club list|show|suspend|resume|delete` and `keys rotate-master|rotate-club ID` map 1:1.
 * Offline use requires the daemon to be stopped (one process owns a data folder).
 *
 * `hooks.onStep(step)` is called at each durable step of the multi-step operations (names in
 * ROTATE_MASTER_STEPS, ROTATE_CLUB_STEPS, DELETE_CLUB_STEPS); tests kill the process there.
 */
import { rmSync, statSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fsyncDir } from '../../crypto/atomic-file.js';
import { generateOneTimePassword, hashPassword } from '../../crypto/password.js';
import { newDataKey, wrapKey } from '../../crypto/wrap.js';
import { clubDbPath, clubDir } from '../club/club-store.js';
import { StorageError } from '../engine/errors.js';
import { PLANS, type ClubRow, type ClubStatus, type Plan } from './server-db.js';
import { type Storage } from './storage.js';

export interface StepHooks {
  onStep?: (step: string) => void;
}

export const ROTATE_MASTER_STEPS = ['next-key-written', 'server-copied', 'server-rekeyed', 'keys-rewrapped', 'server-swapped', 'key-swapped'] as const;
export const ROTATE_CLUB_STEPS = ['pending-key-stored', 'store-copied', 'store-rekeyed', 'documents-rewrapped', 'store-swapped', 'key-promoted'] as const;
export const DELETE_CLUB_STEPS = ['keys-destroyed', 'files-removed'] as const;

export interface ClubSummary {
  id: string;
  name: string;
  plan: Plan;
  status: ClubStatus;
  created: string;
  keyVersion: number;
  rotationPending: boolean;
  storeCreated: boolean;
}

export interface ClubDetails extends ClubSummary {
  settings: Record<string, unknown>;
  admins: string[];
  users: number;
  persons: number;
  documents: number;
  storeBytes: number;
  documentBytes: number;
}

export interface CreateClubInput {
  name: string;
  adminUser: string;
  plan?: Plan;
  /** Given: stored hashed, nothing returned. Absent: a one-time password is generated and returned once. */
  adminPassword?: string;
  settings?: Record<string, unknown>;
  /** Create the store file now (default true). Bulk provisioning passes false: created on first open. */
  materialize?: boolean;
}

export interface CreateClubResult {
  id: string;
  name: string;
  plan: Plan;
  adminUser: string;
  oneTimePassword?: string;
}

const USERNAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;

function summary(r: ClubRow): ClubSummary {
  return {
    id: r.id,
    name: r.name,
    plan: r.plan,
    status: r.status,
    created: r.created,
    keyVersion: r.keyVersion,
    rotationPending: r.pendingWrappedKey !== null,
    storeCreated: r.storeState === 'created',
  };
}

function newClubId(): string {
  return 'c' + randomBytes(8).toString('hex');
}

function checkCreateInput(i: CreateClubInput): { name: string; plan: Plan } {
  const name = String(i.name ?? '').trim();
  if (name.length < 1 || name.length > 200) throw new StorageError('INVALID_ARGUMENT', 'club name must be 1..200 characters');
  if (!USERNAME_RE.test(String(i.adminUser ?? ''))) throw new StorageError('INVALID_ARGUMENT', 'admin user name must be 1..64 characters of letters, digits, . _ @ -, starting with a letter or digit');
  const plan = i.plan ?? 'basic';
  if (!PLANS.includes(plan)) throw new StorageError('INVALID_ARGUMENT', `plan must be one of ${PLANS.join(', ')}`);
  if (i.adminPassword !== undefined && (i.adminPassword.length < 12 || i.adminPassword.length > 1024)) {
    throw new StorageError('INVALID_ARGUMENT', 'admin password must be 12..1024 characters');
  }
  return { name, plan };
}

function newClubRow(st: Storage, id: string, name: string, plan: Plan, admin: ClubRow['pendingAdmin'], settings: Record<string, unknown>): ClubRow {
  const dataKey = newDataKey();
  const wrapped = wrapKey(st.master.key, dataKey, { purpose: 'club-data-key', clubId: id, keyVersion: 1 });
  dataKey.fill(0);
  return {
    id,
    name,
    plan,
    status: 'active',
    created: new Date().toISOString(),
    settings,
    wrappedKey: wrapped,
    keyVersion: 1,
    pendingWrappedKey: null,
    pendingKeyVersion: null,
    storeState: 'pending',
    pendingAdmin: admin,
  };
}

/** `club create`: a new club with its data key and its administrator (the contract's named person). */
export async function createClub(st: Storage, input: CreateClubInput): Promise<CreateClubResult> {
  const { name, plan } = checkCreateInput(input);
  const otp = input.adminPassword === undefined ? generateOneTimePassword() : undefined;
  const passwordHash = await hashPassword(input.adminPassword ?? otp!);
  const id = newClubId();
  st.server.insertClub(newClubRow(st, id, name, plan, { username: input.adminUser, passwordHash, mustChangePassword: otp !== undefined }, input.settings ?? {}));
  if (input.materialize !== false) st.openClub(id);
  return { id, name, plan, adminUser: input.adminUser, ...(otp !== undefined ? { oneTimePassword: otp } : {}) };
}

/**
 * Bulk provisioning (migrations from another system, load tests): one transaction for all rows,
 * stores created lazily on first open. Each spec carries a ready password hash.
 */
export function createClubsBulk(st: Storage, specs: Array<{ name: string; adminUser: string; plan?: Plan; passwordHash: string }>): string[] {
  const rows = specs.map((s) => {
    const { name, plan } = checkCreateInput({ name: s.name, adminUser: s.adminUser, ...(s.plan ? { plan: s.plan } : {}) });
    return newClubRow(st, newClubId(), name, plan, { username: s.adminUser, passwordHash: s.passwordHash, mustChangePassword: true }, {});
  });
  st.server.insertClubs(rows);
  return rows.map((r) => r.id);
}

export function listClubs(st: Storage): ClubSummary[] {
  return st.server.listClubs().map(summary);
}

function fileSize(p: string): number {
  try {
    return statSync(p).size;
  } catch {
    return 0;
  }
}

/** `club show`: the server-side facts plus counts from the store (opens it, even when suspended). */
export function showClub(st: Storage, id: string): ClubDetails {
  const row = st.server.mustGetClub(id);
  const base: ClubDetails = { ...summary(row), settings: row.settings, admins: [], users: 0, persons: 0, documents: 0, storeBytes: 0, documentBytes: 0 };
  if (row.status === 'deleting') return base;
  const store = st.openClub(id, { allowSuspended: true });
  const count = (t: string) => (store.db.prepare(`SELECT count(*) AS n FROM ${t}`).get() as { n: number }).n;
  base.admins = (store.db.prepare('SELECT username FROM users WHERE isAdmin = 1 ORDER BY username').all() as Array<{ username: string }>).map((r) => r.username);
  base.users = count('users');
  base.persons = count('persons');
  base.documents = count('documents');
  base.documentBytes = (store.db.prepare('SELECT coalesce(sum(size), 0) AS n FROM documents').get() as { n: number }).n;
  const p = clubDbPath(st.dataDir, id);
  base.storeBytes = fileSize(p) + fileSize(p + '-wal');
  return base;
}

export function suspendClub(st: Storage, id: string): ClubSummary {
  const row = st.server.mustGetClub(id);
  if (row.status === 'deleting') throw new StorageError('CLUB_DELETED', `club ${id} is being deleted`);
  st.server.setStatus(id, 'suspended');
  st.cache.evict(id);
  return summary(st.server.mustGetClub(id));
}

export function resumeClub(st: Storage, id: string): ClubSummary {
  const row = st.server.mustGetClub(id);
  if (row.status === 'deleting') throw new StorageError('CLUB_DELETED', `club ${id} is being deleted`);
  st.server.setStatus(id, 'active');
  return summary(st.server.mustGetClub(id));
}

/**
 * `club delete`: crypto-shredding. 1) every key of the club is removed from the server database:
 * the wrapped data keys and the club's archive key (durable before anything else happens; the
 * server.db WAL is then checkpointed and truncated, and deleted rows are overwritten, so no
 * frame or free page keeps them); from then on nothing decrypts the club's files, nor any server
 * archive of the club at any destination; 2) the club's folder is removed; 3) its anchors and
 * row are removed and the deletion is recorded (`club_deletions`, shown by `backup list`), WAL
 * truncated again. Interrupted, the club stays listed with status `deleting` and a second
 * `club delete` finishes. Removing the club's archives at the destinations is the daemon's part
 * (daemon/backup/backup-ops.ts purgeDeletedClubArchives), after this.
 */
export async function deleteClub(st: Storage, id: string, hooks: StepHooks = {}): Promise<{ id: string; deleted: true }> {
  st.server.mustGetClub(id);
  const release = st.cache.lock(id);
  try {
    st.server.destroyKeys(id);
    hooks.onStep?.('keys-destroyed');
    const dir = clubDir(st.dataDir, id);
    rmSync(dir, { recursive: true, force: true });
    fsyncDir(dirname(dir));
    // Archives taken before restores (storage/backup/backup-archive.ts preRestoreDir): sealed with the
    // club's archive key, which is gone; the files go too.
    rmSync(join(st.dataDir, 'pre-restore', id), { recursive: true, force: true });
    hooks.onStep?.('files-removed');
    st.server.db.transaction(() => {
      st.server.deleteAnchors(id);
      st.server.deleteClubRow(id);
      st.server.recordDeletion(id, new Date().toISOString());
    })();
    st.server.checkpointTruncate();
    return { id, deleted: true };
  } finally {
    release();
  }
}

/**
 * scrypt cost (log2 N) for the hash of a generated one-time password. Such a password is 20
 * characters from a 54-letter alphabet (about 114 bits, crypto/password.ts), so guessing it from
 * its hash takes about 2^113 hash evaluations whatever the cost: key stretching protects
 * low-entropy human passwords and adds nothing here (NIST SP 800-63B section 5.1.1.2 asks for a
 * salted one-way KDF, which this still is). The low cost is what makes bulk provisioning fast:
 * 2^10 instead of 2^15 is 32x less work per club. The hash is replaced at full cost by the
 * administrator's own password at first login (mustChangePassword) and flagged by needsRehash.
 */
export const ONE_TIME_PASSWORD_LOG2N = 10;

export interface BulkClubSpec {
  name: string;
  adminUser: string;
  plan?: Plan;
}

/**
 * `club create-bulk`: many clubs at once, each with its administrator and a one-time password.
 * Every spec is checked before anything is written; then all rows go in one server-db
 * transaction (all or none), and the stores are created lazily on first use. What `club create`
 * pays per club (a full-cost scrypt, creating the store file with its schema and fsyncs, a
 * process start) is paid here once per batch or not at all. Results keep the input order.
 * Throws INVALID_ARGUMENT naming the spec's index (0-based) for the first bad spec.
 */
export async function createClubsWithPasswords(st: Storage, specs: readonly BulkClubSpec[]): Promise<CreateClubResult[]> {
  const checked = specs.map((s, i) => {
    try {
      return { ...checkCreateInput({ name: s.name, adminUser: s.adminUser, ...(s.plan ? { plan: s.plan } : {}) }), adminUser: s.adminUser };
    } catch (e) {
      throw new StorageError('INVALID_ARGUMENT', `club ${i}: ${(e as Error).message}`);
    }
  });
  const otps = checked.map(() => generateOneTimePassword());
  const hashes = await Promise.all(otps.map((p) => hashPassword(p, ONE_TIME_PASSWORD_LOG2N)));
  const rows = checked.map((c, i) => newClubRow(st, newClubId(), c.name, c.plan, { username: c.adminUser, passwordHash: hashes[i]!, mustChangePassword: true }, {}));
  st.server.insertClubs(rows);
  return rows.map((r, i) => ({ id: r.id, name: r.name, plan: r.plan, adminUser: checked[i]!.adminUser, oneTimePassword: otps[i]! }));
}
