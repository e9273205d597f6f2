/**
 * The server archive keys: random 256-bit keys in server.db (page-encrypted under the master key's
 * sub-key) that seal the nightly server archives (storage/backup-archive.ts). One key is current
 * and writes; `rotateArchiveKey` retires it and makes a new one current. Retired keys are kept
 * for reading only: an archive names its key by id (keyIdOf) and opens with that key while it is
 * kept; nothing new is ever written under a retired key.
 *
 *   meta 'backup.archiveKey.v1'          hex of the current key
 *   meta 'backup.archiveKeys.retired'    JSON [{ id, key (hex), retiredAt }] oldest first
 *
 * `forgetRetiredArchiveKeys` drops retired keys (after a leak, once the archives written under
 * them have been re-written or are no longer wanted): their archives then open nowhere.
 */
import { randomBytes } from 'node:crypto';
import { keyIdOf } from '../crypto/master-key.js';
import type { Storage } from './storage.js';

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

/** The archive key with this id (current or retired), or undefined: for reading archives only. */
export function archiveKeyById(st: Storage, keyId: string): Buffer | undefined {
  const cur = currentArchiveKey(st);
  if (keyIdOf(cur).toString('hex') === keyId) return cur;
  cur.fill(0);
  const r = retired(st).find((x) => x.id === keyId);
  return r ? Buffer.from(r.key, 'hex') : undefined;
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

/** Destroy every retired archive key: archives written under them open nowhere afterwards. */
export function forgetRetiredArchiveKeys(st: Storage): { forgotten: string[] } {
  const ids = retired(st).map((r) => r.id);
  st.server.setMeta(RETIRED_ARCHIVE_KEYS_META, '[]');
  return { forgotten: ids };
}
