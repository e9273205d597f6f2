/**
 * The server archive keys: random 256-bit keys in server.db (page-encrypted under the master key's
 * sub-key) that seal the nightly server archives (storage/backup/backup-archive.ts). One key is current
 * and writes; `rotateArchiveKey` retires it and makes a new one current. Retired keys are kept
 * for reading only: an archive names its key by id (keyIdOf) and opens with that key while it is
 * kept; nothing new is ever written under a retired key.
 *
 *   meta 'backup.archiveKey.v1'          hex of the current key
 *   meta 'backup.archiveKeys.retired'    JSON [{ id, key (hex), retiredAt }] oldest first
 *
 * `forgetRetiredArchiveKeys` drops retired keys (after a leak, once the archives written under
 * them have been re-written or are no longer wanted): their archives then open nowhere.
 *
 * Per-club archive keys: a server archive of club C is sealed under
 *   HKDF-SHA256(server archive key, salt = C's archive key, info "commusic/backup/v2/club/" + C)
 * where C's archive key is a random 256-bit key in C's row of server.db (clubs.archive_key).
 * Deleting the club destroys it together with the data key, so every server archive of the
 * club, at every destination, reachable or not, opens nowhere afterwards. Archives written
 * before per-club keys (sealed under the server key itself) still open by the server key's id.
 */
import { randomBytes } from 'node:crypto';
import { keyIdOf } from '../../crypto/master-key.js';
import { deriveSubkey } from '../../crypto/wrap.js';
import { StorageError } from '../engine/errors.js';
import type { Storage } from '../server/storage.js';

export const ARCHIVE_KEY_META = 'backup.archiveKey.v1';
export const RETIRED_ARCHIVE_KEYS_META = 'backup.archiveKeys.retired';
/** A bound on the retired list (one rotation a day keeps ten years). */
export const MAX_RETIRED_ARCHIVE_KEYS = 4096;

interface Retired {
  id: string;
  key: string;
  retiredAt: string;
}

function retired(st: Storage): Retired[] {
  const v = st.server.getMeta(RETIRED_ARCHIVE_KEYS_META);
  if (!v) return [];
  const a = JSON.parse(v) as unknown;
  return Array.isArray(a) ? (a as Retired[]).filter((r) => typeof r?.id === 'string' && typeof r?.key === 'string' && /^[0-9a-f]{64}$/.test(r.key)) : [];
}

/** The current archive key (created on first use). The caller zeroes the returned copy. */
export function currentArchiveKey(st: Storage): Buffer {
  let hex = st.server.getMeta(ARCHIVE_KEY_META);
  if (!hex) {
    hex = randomBytes(32).toString('hex');
    st.server.setMeta(ARCHIVE_KEY_META, hex);
  }
  return Buffer.from(hex, 'hex');
}

/** The server archive key with this id (current or retired), or undefined: for reading archives only. */
export function archiveKeyById(st: Storage, keyId: string): Buffer | undefined {
  const cur = currentArchiveKey(st);
  if (keyIdOf(cur).toString('hex') === keyId) return cur;
  cur.fill(0);
  const r = retired(st).find((x) => x.id === keyId);
  return r ? Buffer.from(r.key, 'hex') : undefined;
}

/** The retired server archive keys (for reading only: opening and origin MACs of old archives). */
export function retiredArchiveKeys(st: Storage): Buffer[] {
  return retired(st).map((r) => Buffer.from(r.key, 'hex'));
}

/** Ids of the current key and of every retired key (public; for `keys show-archive`). */
export function archiveKeyIds(st: Storage): { current: string; retired: Array<{ id: string; retiredAt: string }> } {
  const cur = currentArchiveKey(st);
  const current = keyIdOf(cur).toString('hex');
  cur.fill(0);
  return { current, retired: retired(st).map((r) => ({ id: r.id, retiredAt: r.retiredAt })) };
}

/**
 * `keys rotate-archive`: a new current archive key; the old one is kept for reading only. One
 * server.db transaction, so a crash leaves either the old or the new state.
 */
export function rotateArchiveKey(st: Storage, now = new Date()): { oldKeyId: string; newKeyId: string; retired: number } {
  const old = currentArchiveKey(st);
  const oldKeyId = keyIdOf(old).toString('hex');
  const next = randomBytes(32);
  const newKeyId = keyIdOf(next).toString('hex');
  let count = 0;
  st.server.db.transaction(() => {
    const list = retired(st).filter((r) => r.id !== oldKeyId);
    list.push({ id: oldKeyId, key: old.toString('hex'), retiredAt: now.toISOString() });
    const kept = list.slice(-MAX_RETIRED_ARCHIVE_KEYS);
    count = kept.length;
    st.server.setMeta(RETIRED_ARCHIVE_KEYS_META, JSON.stringify(kept));
    st.server.setMeta(ARCHIVE_KEY_META, next.toString('hex'));
  })();
  old.fill(0);
  next.fill(0);
  return { oldKeyId, newKeyId, retired: count };
}

/**
 * Destroy retired archive keys (`ids`, or every retired one when absent): archives written under
 * them open nowhere afterwards. The current key is never forgotten (rotate first).
 * @throws StorageError INVALID_ARGUMENT for an id that is not a retired key (the current one included)
 */
export function forgetRetiredArchiveKeys(st: Storage, ids?: readonly string[]): { forgotten: string[]; kept: number } {
  const list = retired(st);
  const unknown = (ids ?? []).filter((id) => !list.some((r) => r.id === id));
  if (unknown.length > 0) throw new StorageError('INVALID_ARGUMENT', `not a retired archive key: ${unknown.join(', ')}${unknown.includes(keyIdOf(currentArchiveKey(st)).toString('hex')) ? ' (the current key: rotate it first)' : ''}`);
  const drop = new Set(ids ?? list.map((r) => r.id));
  const keep = list.filter((r) => !drop.has(r.id));
  st.server.setMeta(RETIRED_ARCHIVE_KEYS_META, JSON.stringify(keep));
  return { forgotten: list.filter((r) => drop.has(r.id)).map((r) => r.id), kept: keep.length };
}

function clubKeyRaw(st: Storage, clubId: string): Buffer | null {
  return st.server.getArchiveKey(clubId);
}

function deriveClubSealKey(serverKey: Buffer, clubKey: Buffer, clubId: string): Buffer {
  return deriveSubkey(serverKey, `commusic/backup/v2/club/${clubId}`, clubKey);
}

/**
 * The key that seals new server archives of `clubId`: derived from the current server archive
 * key and the club's archive key (created on first use). CLUB_DELETED when the club is gone or
 * being deleted.
 */
export function clubSealingKey(st: Storage, clubId: string): Buffer {
  const row = st.server.getClub(clubId);
  if (!row || row.status === 'deleting') throw new StorageError('CLUB_DELETED', `club ${clubId} does not exist or is being deleted; nothing is archived for it`);
  let ck = clubKeyRaw(st, clubId);
  if (!ck) {
    const fresh = randomBytes(32);
    ck = st.server.initArchiveKey(clubId, fresh);
    fresh.fill(0);
    if (!ck) throw new StorageError('CLUB_DELETED', `club ${clubId} is being deleted; nothing is archived for it`);
  }
  const server = currentArchiveKey(st);
  try {
    return deriveClubSealKey(server, ck, clubId);
  } finally {
    server.fill(0);
    ck.fill(0);
  }
}

/**
 * For reading: the key with id `keyId` that opens a server archive of `clubId`: the club's
 * sealing key under the current or a retired server key, or (archives from before per-club keys)
 * a server key itself. Undefined when none matches: another server's archive, or the club was
 * deleted and its archive key destroyed.
 */
export function archiveKeyFor(st: Storage, keyId: string, clubId: string): Buffer | undefined {
  const serverKeys = [currentArchiveKey(st), ...retired(st).map((r) => Buffer.from(r.key, 'hex'))];
  const ck = clubKeyRaw(st, clubId);
  let found: Buffer | undefined;
  for (const sk of serverKeys) {
    if (!found && ck) {
      const d = deriveClubSealKey(sk, ck, clubId);
      if (keyIdOf(d).toString('hex') === keyId) found = d;
      else d.fill(0);
    }
    if (!found && keyIdOf(sk).toString('hex') === keyId) found = Buffer.from(sk);
    sk.fill(0);
  }
  ck?.fill(0);
  return found;
}

/** What opens this server's archives: the current server key and the keyring (current, retired, per club). */
export function serverOpenKey(st: Storage): { serverKey: Buffer; serverKeyring: (keyId: string, clubId: string) => Buffer | undefined } {
  return { serverKey: currentArchiveKey(st), serverKeyring: (keyId, clubId) => archiveKeyFor(st, keyId, clubId) };
}

/**
 * Give each of these clubs its archive key where it has none yet, in one server.db transaction
 * (one fsync for a first nightly run over many clubs, not one per club). Clubs that cannot have
 * one (deleted, being deleted) are skipped: archiving them reports the error.
 */
export function initArchiveKeys(st: Storage, clubs: readonly string[]): void {
  const missing = clubs.filter((c) => {
    const k = clubKeyRaw(st, c);
    k?.fill(0);
    return !k;
  });
  if (missing.length === 0) return;
  st.server.db.transaction(() => {
    for (const c of missing) {
      const fresh = randomBytes(32);
      // Refused (no row change) for a club being deleted: archiving it reports the error.
      st.server.initArchiveKey(c, fresh)?.fill(0);
      fresh.fill(0);
    }
  })();
}

/**
 * The server archive keys as a cluster shares them (docs/CLUSTER.md "Backups"): the current key
 * and the retired ones, hex. Secret: only ever stored sealed (cluster/backup-board.ts).
 */
export interface ArchiveKeyring {
  current: string;
  retired: Array<{ id: string; key: string; retiredAt: string }>;
}

/** This server's archive keyring (the current key is created on first use). */
export function exportArchiveKeyring(st: Storage): ArchiveKeyring {
  const cur = currentArchiveKey(st);
  const current = cur.toString('hex');
  cur.fill(0);
  return { current, retired: retired(st) };
}

/**
 * Take a shared keyring as this server's: its current key becomes current here (this server's
 * own current key, when different and not in the ring, is retired: archives written under it
 * still open here), and the retired keys become the ring's (a key the ring no longer has was
 * forgotten on another member: it is forgotten here too). One server.db transaction. Returns
 * whether anything changed. @throws StorageError INVALID_ARGUMENT for a malformed ring.
 */
export function adoptArchiveKeyring(st: Storage, ring: ArchiveKeyring, now = new Date()): { changed: boolean } {
  const hex64 = /^[0-9a-f]{64}$/;
  if (!hex64.test(ring.current) || !Array.isArray(ring.retired) || ring.retired.some((r) => !hex64.test(r?.key ?? '') || typeof r.retiredAt !== 'string')) {
    throw new StorageError('INVALID_ARGUMENT', 'archive keyring is malformed');
  }
  const next = Buffer.from(ring.current, 'hex');
  const nextId = keyIdOf(next).toString('hex');
  next.fill(0);
  let changed = false;
  st.server.db.transaction(() => {
    if (!st.server.getMeta(ARCHIVE_KEY_META)) {
      // No key of its own yet (a new member): nothing to retire.
      st.server.setMeta(ARCHIVE_KEY_META, ring.current);
      changed = true;
    }
    const cur = currentArchiveKey(st);
    const curId = keyIdOf(cur).toString('hex');
    const before = retired(st);
    const list = ring.retired.map((r) => ({ id: keyIdOf(Buffer.from(r.key, 'hex')).toString('hex'), key: r.key, retiredAt: r.retiredAt }));
    if (curId !== nextId) {
      if (!list.some((r) => r.id === curId)) list.push({ id: curId, key: cur.toString('hex'), retiredAt: now.toISOString() });
      st.server.setMeta(ARCHIVE_KEY_META, ring.current);
      changed = true;
    }
    cur.fill(0);
    const kept = list.filter((r) => r.id !== nextId).slice(-MAX_RETIRED_ARCHIVE_KEYS);
    if (changed || kept.length !== before.length || kept.some((r, i) => r.id !== before[i]!.id)) {
      st.server.setMeta(RETIRED_ARCHIVE_KEYS_META, JSON.stringify(kept));
      changed = true;
    }
  })();
  return { changed };
}

/**
 * Take a club's shared archive key as this server's (cluster): 'same' when it already was,
 * 'set' or 'replaced' when written, 'no-club' when the club is unknown here or being deleted.
 */
export function adoptClubArchiveKey(st: Storage, clubId: string, key: Buffer): 'same' | 'set' | 'replaced' | 'no-club' {
  if (key.length !== 32) throw new StorageError('INVALID_ARGUMENT', 'club archive key must be 32 bytes');
  const row = st.server.getClub(clubId);
  if (!row || row.status === 'deleting') return 'no-club';
  const have = clubKeyRaw(st, clubId);
  if (have?.equals(key)) {
    have.fill(0);
    return 'same';
  }
  const now = st.server.setArchiveKey(clubId, key);
  if (!now?.equals(key)) return 'no-club';
  now.fill(0);
  const out = have ? 'replaced' : 'set';
  have?.fill(0);
  return out;
}
