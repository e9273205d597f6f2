/**
 * Issue 13 with issue 14: a group commit answers several commands at once, and the first of them
 * to pass the cluster's output gate drains the changes of all; the others find nothing left to
 * drain. Each of them must still wait until the append carrying its changes is in the log, and
 * share its failure (cluster/output-gate.ts commitClub).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { installCapture } from '../cluster/capture.js';
import { ClusterError, silentClusterLogger } from '../cluster/errors.js';
import type { ClubLog } from '../cluster/club-log.js';
import type { ClubState, NodeContext } from '../cluster/node-types.js';
import { commitClub } from '../cluster/output-gate.js';
import { AuditLog } from '../storage/club/audit-log.js';
import { updateRecord, createRecord, type MutationOptions } from '../storage/club/club-data.js';
import { openClubStore } from '../storage/club/club-store.js';
import { tmpDir } from './store-helpers.js';

function setup(t: { after(fn: () => void): void }) {
  const dir = tmpDir('commusic-gate-');
  const root = join(dir.dir, 'p');
  mkdirSync(root, { recursive: true });
  const store = openClubStore({ dataDir: root, clubId: 'club-g', keys: [{ key: randomBytes(32), version: 2 }], create: true });
  t.after(() => {
    store.close();
    dir.cleanup();
  });
  installCapture(store.db);
  const o: MutationOptions = { scope: { kind: 'all' }, audit: new AuditLog(store.db, 'club-g'), actor: { user: 'anna', ip: '127.0.0.1', session: 's1' } };
  const id = createRecord(store.db, 'persons', { firstName: 'Anna', lastName: 'Muster' }, o).id as number;
  const appends: Array<{ resolve(seq: number): void; reject(e: unknown): void }> = [];
  const log = {
    head: { seq: 1, digest: 'd1' },
    append: () => new Promise<number>((resolve, reject) => appends.push({ resolve, reject })),
  } as unknown as ClubLog;
  const st: ClubState = { role: 'primary', log, follower: undefined, serving: true, drainedUpto: 0, chain: Promise.resolve(), inflight: 0, needsRebuild: false };
  let moved = 0;
  const ctx = { storage: { openClub: () => store }, logger: silentClusterLogger, clubMoved: () => moved++, reconcileSoon: () => undefined } as unknown as NodeContext;
  return { store, o, id, appends, log, st, ctx, moved: () => moved };
}

/** Whether p has settled after the queued callbacks of a few turns ran. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(() => (done = true), () => (done = true));
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  return done;
}

test('a command whose changes another commit drained waits for that append', async (t) => {
  const s = setup(t);
  // Two commands of one group: both changes committed before either passes the gate.
  s.store.db.transaction(() => {
    updateRecord(s.store.db, 'persons', s.id, { city: 'Ulm' }, s.o);
    updateRecord(s.store.db, 'persons', s.id, { notes: 'zwei' }, s.o);
  })();
  const first = commitClub(s.ctx, 'club-g', s.st, s.log);
  const second = commitClub(s.ctx, 'club-g', s.st, s.log);
  assert.equal(s.appends.length, 1, 'one append carries both');
  assert.equal(await settled(second), false, 'the second answer waits for the append in flight');
  s.appends[0]!.resolve(1);
  await first;
  await second;
  // With nothing in flight and nothing to drain, a commit passes at once.
  assert.equal(await settled(commitClub(s.ctx, 'club-g', s.st, s.log)), true);
});

test('when that append fails, the waiting command fails too', async (t) => {
  const s = setup(t);
  updateRecord(s.store.db, 'persons', s.id, { city: 'Ulm' }, s.o);
  const first = commitClub(s.ctx, 'club-g', s.st, s.log);
  const second = commitClub(s.ctx, 'club-g', s.st, s.log);
  s.appends[0]!.reject(new ClusterError('FENCED', 'fenced'));
  await assert.rejects(first, (e: unknown) => e instanceof ClusterError && e.code === 'FENCED');
  await assert.rejects(second, (e: unknown) => e instanceof ClusterError && e.code === 'FENCED');
  assert.equal(s.st.serving, false);
  assert.equal(s.moved(), 1);
});
