import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { hashPassword } from '../crypto/password.js';
import { AuditLog } from '../storage/club/audit-log.js';
import { listDocuments, putDocument, readDocumentBuffer } from '../storage/club/documents.js';
import { createClubsBulk } from '../storage/server/provisioning.js';
import type { Plan } from '../storage/server/server-db.js';
import { openStorage, type Storage } from '../storage/server/storage.js';

let hash: Promise<string> | undefined;

export async function newStorage(dataDir: string): Promise<Storage> {
  return openStorage({ dataDir, create: true });
}

export async function makeClubs(st: Storage, n: number, plan: Plan = 'basic', prefix = 'Club'): Promise<string[]> {
  hash ??= hashPassword('a-long-test-password', 10);
  const passwordHash = await hash;
  return createClubsBulk(st, Array.from({ length: n }, (_, i) => ({ name: `${prefix} ${i} ${randomBytes(3).toString('hex')}`, adminUser: 'admin', plan, passwordHash })));
}

/** One write as the daemon does it: a change and its change-log entry in one transaction. */
export function addPerson(st: Storage, clubId: string, i: number): number {
  const db = st.openClub(clubId).db;
  return db.transaction(() => {
    const r = db.prepare('INSERT INTO persons (firstName, lastName, photoConsent, blocked) VALUES (?, ?, 0, 0)').run(`First${i}`, `Last${i}`);
    new AuditLog(db, clubId).append({ user: 'admin', ip: '127.0.0.1', session: null, action: 'create', entity: 'persons', recordId: Number(r.lastInsertRowid), changes: { firstName: { old: null, new: `First${i}` } } });
    return Number(r.lastInsertRowid);
  })();
}

export async function addDocument(st: Storage, clubId: string, bytes: Buffer, name = 'doc.pdf'): Promise<number> {
  return (await putDocument(st, clubId, Readable.from([bytes]), { kind: 'other', name })).id;
}

/** Every row of every table (documents without its file name and wrapped key). */
export function dumpClub(st: Storage, clubId: string, o: { skipAuditAfter?: number } = {}): Record<string, unknown[]> {
  const db = st.openClub(clubId, { allowSuspended: true }).db;
  const out: Record<string, unknown[]> = {};
  const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as Array<{ name: string }>).map((r) => r.name);
  for (const t of tables) {
    // Signed heads depend on who signs; empty tables the code creates on first use say nothing about the data.
    if (t === 'audit_heads') continue;
    let rows = db.prepare(`SELECT * FROM "${t}" ORDER BY rowid`).all() as Array<Record<string, unknown>>;
    if (rows.length === 0 && t === 'user_grants') continue;
    if (t === 'documents') rows = rows.map(({ file: _f, wrappedKey: _w, ...r }) => r);
    if (t === 'audit_log' && o.skipAuditAfter !== undefined) rows = rows.filter((r) => (r['seq'] as number) <= o.skipAuditAfter!);
    out[t] = rows.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, Buffer.isBuffer(v) ? `hex:${v.toString('hex')}` : v])));
  }
  return out;
}

export async function documentHashes(st: Storage, clubId: string): Promise<Record<number, string>> {
  const out: Record<number, string> = {};
  for (const d of listDocuments(st, clubId)) out[d.id] = createHash('sha256').update(await readDocumentBuffer(st, clubId, d.id)).digest('hex');
  return out;
}

export function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}
