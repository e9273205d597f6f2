// Issue 10, must-show 4 (and the rest of its kind: documents.export, exports.club, log.export): persons.export of 10,000 persons (2,000-character notes, sorted by the
// notes) works over the protocol as a stream, NDJSON one record per line, pulled page by page
// only as the client grants credit: the server never runs more than a few pages ahead of what
// the client has read. Without `stream` the one-record answer is cut by bytes, with a cursor.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ADMIN_PASSWORD, clubEnv, type ClubTestEnv } from './helpers/club-server.js';
import { EXPORT_PAGE_ROWS } from '../daemon/club/club-commands.js';
import { Readable } from 'node:stream';
import { putDocument } from '../storage/club/documents.js';

const N = 10_000;

async function ndjson(it: AsyncIterable<Uint8Array>): Promise<Array<Record<string, unknown>>> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(Buffer.from(c));
  const text = Buffer.concat(parts).toString('utf8');
  assert.ok(text === '' || text.endsWith('\n'));
  return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
}
let env: ClubTestEnv;
before(async () => {
  env = await clubEnv();
});
after(async () => env.close());

describe('streamed export', { timeout: 180_000 }, () => {
  it('persons.export of 10,000 persons streams over TCP with bounded server memory', async () => {
    const club = await env.newClub();
    const db = env.storage.openClub(club).db;
    const ins = db.prepare('INSERT INTO persons (firstName, lastName, notes, photoConsent, blocked) VALUES (?, ?, ?, 0, 0)');
    db.transaction(() => {
      for (let i = 0; i < N; i++) ins.run(`Vorname${i}`, `Nachname${i}`, `${String(i).padStart(5, '0')} ${'Notiz '.repeat(400)}`.slice(0, 2000));
    })();
    // Count the pages the server reads from the store (each page opens the store once).
    let pages = 0;
    const open = env.storage.openClub.bind(env.storage);
    env.storage.openClub = ((id: string, o?: { allowSuspended?: boolean }) => {
      if (new Error().stack?.includes('exportRows')) pages++;
      return open(id, o);
    }) as typeof env.storage.openClub;
    const { connect } = await env.listen();
    const conn = await connect();
    try {
      await conn.request('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
      // The one-record answer cannot carry this: it is cut by bytes, with a cursor for the rest (PROTOCOL.md 7.4).
      const cut = (await conn.request('persons.export', { sort: [{ field: 'notes', dir: 'desc' }] })).payload as { items: unknown[]; truncated: boolean; nextCursor: string | null };
      assert.ok(cut.items.length > 0 && cut.items.length < N && cut.truncated && typeof cut.nextCursor === 'string');
      const r = await conn.request('persons.export', { stream: true, sort: [{ field: 'notes', dir: 'desc' }], fields: ['id', 'lastName', 'notes'] }, { timeoutMs: 120_000 });
      assert.deepEqual(r.payload, { count: N, truncated: false, format: 'ndjson' });
      assert.ok(r.download);
      let lines = 0;
      let rest = '';
      let prev: string | undefined;
      let maxAhead = 0;
      for await (const c of r.download!) {
        rest += Buffer.from(c).toString('utf8');
        const parts = rest.split('\n');
        rest = parts.pop()!;
        for (const l of parts) {
          const rec = JSON.parse(l) as { id: number; lastName: string; notes: string };
          assert.deepEqual(Object.keys(rec), ['id', 'lastName', 'notes']);
          if (prev !== undefined) assert.ok(rec.notes <= prev, 'sorted by notes, descending');
          prev = rec.notes;
          lines++;
        }
        // Pages the server has read beyond what the client has received.
        maxAhead = Math.max(maxAhead, pages - Math.floor(lines / EXPORT_PAGE_ROWS));
      }
      assert.equal(rest, '');
      assert.equal(lines, N);
      assert.equal(pages, N / EXPORT_PAGE_ROWS);
      assert.ok(maxAhead <= 3, `the server ran at most 3 pages ahead of the client (was ${maxAhead})`);
      const log = db.prepare("SELECT changes FROM audit_log WHERE action = 'export' ORDER BY seq DESC LIMIT 1").get() as { changes: string };
      assert.equal((JSON.parse(log.changes) as { count: number }).count, N);

      // The other exports of the kind stream the same way.
      await putDocument(env.storage, club, Readable.from([Buffer.from('Urkunde 1')]), { kind: 'honour', name: 'a.pdf' });
      await putDocument(env.storage, club, Readable.from([Buffer.from('Urkunde 2')]), { kind: 'other', name: 'b.pdf' });
      const docs = await conn.request('documents.export', { stream: true });
      assert.deepEqual(docs.payload, { count: 2, truncated: false, format: 'ndjson' });
      assert.deepEqual((await ndjson(docs.download!)).map((d) => d['name']), ['a.pdf', 'b.pdf']);
      const all = await conn.request('exports.club', { stream: true }, { timeoutMs: 120_000 });
      const counts = (all.payload as { counts: Record<string, number> }).counts;
      assert.equal(counts['persons'], N);
      const perEntity: Record<string, number> = {};
      for (const l of await ndjson(all.download!)) perEntity[l['entity'] as string] = (perEntity[l['entity'] as string] ?? 0) + 1;
      assert.deepEqual(perEntity, Object.fromEntries(Object.entries(counts).filter(([, n]) => n > 0)));
      const clubPage = (await conn.request('exports.club', {})).payload as { nextCursor: string | null };
      assert.equal(typeof clubPage.nextCursor, 'string', 'the one-record export is cut, with a cursor');
      const lg = await conn.request('log.export', { stream: true });
      const entries = await ndjson(lg.download!);
      assert.equal(entries.length, (lg.payload as { count: number }).count);
      assert.ok(entries.length >= 3 && entries.every((e, i) => i === 0 || (e['seq'] as number) > (entries[i - 1]!['seq'] as number)));
    } finally {
      env.storage.openClub = open;
      await conn.close();
    }
  });

  it('a streamed export stops when the session ends or the export right is withdrawn mid-stream', async () => {
    const club = await env.newClub();
    const db = env.storage.openClub(club).db;
    const ins = db.prepare('INSERT INTO persons (firstName, lastName, photoConsent, blocked) VALUES (?, ?, 0, 0)');
    db.transaction(() => {
      for (let i = 0; i < 4 * EXPORT_PAGE_ROWS; i++) ins.run(`V${i}`, `N${i}`);
    })();
    const admin = env.session();
    await admin.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    const grants = [{ area: 'persons', actions: ['read', 'export'], scope: { kind: 'club' } }];
    const uid = (await admin.call('users.create', { username: 'exporter', password: 'exporter-password-1', grants })).payload.user.id as number;
    const run = async (withdraw: () => Promise<unknown>): Promise<{ lines: number; code?: string }> => {
      const s = env.session('127.0.4.1');
      await s.call('auth.login', { club, user: 'exporter', password: 'exporter-password-1' });
      const it = (await s.call('persons.export', { stream: true })).download![Symbol.asyncIterator]();
      const first = await it.next();
      const lines = Buffer.from(first.value as Uint8Array).toString('utf8').split('\n').filter(Boolean).length;
      await withdraw();
      try {
        await it.next();
        return { lines };
      } catch (e) {
        return { lines, code: (e as { code?: string }).code };
      }
    };
    const r1 = await run(() => admin.call('rights.set', { userId: uid, grants: [{ area: 'persons', actions: ['read'], scope: { kind: 'club' } }] }));
    assert.deepEqual(r1, { lines: EXPORT_PAGE_ROWS, code: 'FORBIDDEN' });
    await admin.call('rights.set', { userId: uid, grants });
    const r2 = await run(() => admin.call('users.disable', { id: uid }));
    assert.deepEqual(r2, { lines: EXPORT_PAGE_ROWS, code: 'UNAUTHENTICATED' });
  });
});
