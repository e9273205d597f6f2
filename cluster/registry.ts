/**
 * The club registry shared by all servers (issue 14): each club's server-database row (name,
 * plan, status, settings, its data key wrapped under the shared master key, the administrator to
 * create) under `registry/<club>`, sealed under the cluster record key with the club id as
 * associated data. A club created on any member is known to all of them; deleting it removes the
 * record, and the compaction that follows drops the wrapped key from etcd's history.
 */
import { openRecord, sealRecord } from '../crypto/cluster-seal.js';
import type { ClubRow } from '../storage/server/server-db.js';
import { importRowAnswers, type RowAnswer } from '../storage/server/row-answers.js';
import type { Storage } from '../storage/server/storage.js';
import { ClusterError, type ClusterLogger } from './errors.js';
import { backupClubKey } from './backup-board.js';
import type { EtcdGateway } from './etcd-gateway.js';
import { checkClubId, CLUBS_PREFIX, placementKey } from './keys.js';

export const REGISTRY_PREFIX = 'registry/';
export const registryKey = (club: string) => `${REGISTRY_PREFIX}${checkClubId(club)}`;

const aad = (club: string) => Buffer.from(`commusic-registry|${club}`, 'utf8');

interface Wire extends Omit<ClubRow, 'wrappedKey' | 'pendingWrappedKey'> {
  wrappedKey: string | null;
  pendingWrappedKey: string | null;
  /** The stored answers of the row's keyed commands (storage/server/row-answers.ts), answer in base64. */
  answers?: Array<Omit<RowAnswer, 'answer'> & { answer: string }>;
}

/** A club's registry record: its server-database row and the answers of the keyed commands that changed it. */
export interface ClubRecord {
  row: ClubRow;
  answers: RowAnswer[];
}

/**
 * Seal a club row for etcd, with the stored answers of the keyed commands that changed it (so a
 * retry on the club's next primary finds the answer beside the change).
 */
export function sealClubRow(recordKey: Uint8Array, row: ClubRow, answers: readonly RowAnswer[] = []): Buffer {
  const w: Wire = {
    ...row,
    wrappedKey: row.wrappedKey?.toString('base64') ?? null,
    pendingWrappedKey: row.pendingWrappedKey?.toString('base64') ?? null,
    ...(answers.length > 0 ? { answers: answers.map((a) => ({ ...a, answer: a.answer.toString('base64') })) } : {}),
  };
  return sealRecord(recordKey, Buffer.from(JSON.stringify(w), 'utf8'), aad(row.id));
}

/**
 * Open a sealed club record found under `registry/<club>`.
 * @throws ClusterError LOG_CORRUPT when it fails authentication or has the wrong shape.
 */
export function openClubRow(recordKey: Uint8Array, club: string, sealed: Uint8Array): ClubRecord {
  let w: Wire;
  try {
    w = JSON.parse(openRecord(recordKey, sealed, aad(club)).toString('utf8')) as Wire;
  } catch (e) {
    throw new ClusterError('LOG_CORRUPT', `registry record of club ${club} failed authentication`, { cause: e });
  }
  if (w.id !== club || typeof w.name !== 'string' || typeof w.keyVersion !== 'number') throw new ClusterError('LOG_CORRUPT', `registry record of club ${club} has an invalid shape`);
  const { answers, ...rest } = w;
  if (answers !== undefined && (!Array.isArray(answers) || !answers.every((a) => a !== null && typeof a === 'object' && typeof a.answer === 'string'))) {
    throw new ClusterError('LOG_CORRUPT', `registry record of club ${club} has an invalid shape`);
  }
  return {
    answers: (answers ?? []).map((a) => ({ rk: a.rk, command: a.command, at: a.at, answer: Buffer.from(a.answer, 'base64') })),
    row: {
      ...rest,
      wrappedKey: rest.wrappedKey === null ? null : Buffer.from(rest.wrappedKey, 'base64'),
      pendingWrappedKey: rest.pendingWrappedKey === null ? null : Buffer.from(rest.pendingWrappedKey, 'base64'),
    },
  };
}

/**
 * A club row from the registry applied to the row this member has (an operator's change made on
 * any member: `club suspend`, `club resume`, `backup set-mail`): its status (active or
 * suspended) and settings. Keys, the store's state and the administrator to create stay this
 * member's own; a club being deleted on either side is left alone. Returns whether anything
 * changed. Suspending evicts the open store, as `club suspend` does (cluster roles reopen it).
 */
export function applyClubRowUpdate(storage: Storage, have: ClubRow, row: ClubRow): boolean {
  if (have.status === 'deleting' || row.status === 'deleting') return false;
  let changed = false;
  if (row.status !== have.status) {
    storage.server.setStatus(have.id, row.status);
    if (row.status === 'suspended') storage.cache.evict(have.id);
    changed = true;
  }
  if (JSON.stringify(row.settings) !== JSON.stringify(have.settings)) {
    storage.server.setSettings(have.id, row.settings);
    changed = true;
  }
  return changed;
}

/**
 * Remove a deleted club from etcd: registry record, placement, owner, log, backup record, then
 * compact the history so the wrapped key and the sealed entries are gone from etcd as well
 * (SECURITY.md).
 */
export async function forgetClubRecords(gw: EtcdGateway, club: string): Promise<void> {
  await gw.read('forget club', () =>
    gw.kv
      .if(registryKey(club), 'Create', '>', 0)
      .then(gw.kv.delete().key(registryKey(club)), gw.kv.delete().key(placementKey(club)), gw.kv.delete().prefix(`${CLUBS_PREFIX}${club}/`), gw.kv.delete().key(backupClubKey(club)))
      .else(gw.kv.delete().prefix(`${CLUBS_PREFIX}${club}/`), gw.kv.delete().key(backupClubKey(club)))
      .commit(),
  );
  await gw.compact(await gw.revision());
}

/**
 * Import a club's registry record into this member's server database: a new club is inserted
 * (its store is created on first use; the administrator row the primary ships in its first
 * entries overwrites the one made locally, same row id), a known one takes the operator's change
 * made on any member, and the stored answers of the row's keyed commands come along. Returns false (logged `cluster.registry.bad`) when the record does not open.
 */
export function importClubRecord(storage: Storage, recordKey: Uint8Array, logger: ClusterLogger, club: string, value: Buffer): boolean {
  try {
    const { row, answers } = openClubRow(recordKey, club, value);
    const have = storage.server.getClub(club);
    if (!have) storage.server.insertClub({ ...row, storeState: 'pending' });
    else applyClubRowUpdate(storage, have, row);
    importRowAnswers(storage.server.db, club, answers, Date.now()); // a keyed change's answer, beside it
    return true;
  } catch (e) {
    logger.warn('registry record not imported', { event: 'cluster.registry.bad', clubId: club, code: (e as ClusterError).code ?? (e as Error).name });
    return false;
  }
}
