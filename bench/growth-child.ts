/**
 * The server under test for bench/growth.ts, in its own process: one club grown to N persons
 * (argv[2]), each with a membership and an active register assignment (10 registers), and
 * three change-log entries per person (hash-chained through the real AuditLog), seeded directly
 * through the storage layer for speed; then the daemon with the club commands on 127.0.0.1:0.
 * IPC: sends `ready` {port, fingerprint, club, persons (sample ids), registers, maxPersonId};
 * answers `cpu` with the process's CPU time (user + system, microseconds) and RSS (bytes), after a
 * full garbage collection when asked (`gc: true`; the parent starts it with --expose-gc).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../daemon/main/config.js';
import { AuditLog } from '../storage/club/audit-log.js';
import { createClub } from '../storage/server/provisioning.js';
import { openStorage } from '../storage/server/storage.js';
import { startChildDaemon } from './child-daemon.js';

export const GROWTH_ADMIN = { user: 'bench', password: 'bench-password-123' };
const INITIALS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';

async function main(): Promise<void> {
  const n = Number(process.argv[2]);
  const dir = mkdtempSync(join(tmpdir(), 'commusic-bench-growth-'));
  const storage = await openStorage({ dataDir: join(dir, 'data'), create: true, scryptLog2N: 10 });
  const { id: club } = await createClub(storage, { name: 'MV Growth', adminUser: GROWTH_ADMIN.user, adminPassword: GROWTH_ADMIN.password });
  const db = storage.openClub(club).db;
  const audit = new AuditLog(db, club);
  const actor = { user: GROWTH_ADMIN.user, ip: '127.0.0.1', session: null };
  const registers: number[] = [];
  const person = db.prepare(`INSERT INTO persons ("firstName", "lastName", city, "photoConsent", blocked) VALUES (?, ?, ?, 0, 0) RETURNING id`);
  const membership = db.prepare(`INSERT INTO memberships ("personId", kind, "from", insured) VALUES (?, 'active', '2010-01-01', 0) RETURNING id`);
  const assignment = db.prepare(`INSERT INTO register_assignments ("personId", "registerId", instrument, "from", leader) VALUES (?, ?, 'Trompete', '2010-01-01', 0) RETURNING id`);
  let maxPersonId = 0;
  db.transaction(() => {
    for (let r = 0; r < 10; r++) registers.push((db.prepare(`INSERT INTO registers (name) VALUES (?) RETURNING id`).get(`Register ${r}`) as { id: number }).id);
    for (let i = 0; i < n; i++) {
      const last = `${INITIALS[(i * 7) % 26]}${'aeiou'[i % 5]}nn${i}`;
      const pid = (person.get(`Vorname${i % 97}`, last, `Ort${i % 50}`) as { id: number }).id;
      const mid = (membership.get(pid) as { id: number }).id;
      const aid = (assignment.get(pid, registers[i % 10]!) as { id: number }).id;
      audit.append({ ...actor, action: 'create', entity: 'persons', recordId: pid, changes: { firstName: { old: null, new: `Vorname${i % 97}` }, lastName: { old: null, new: last } } });
      audit.append({ ...actor, action: 'create', entity: 'memberships', recordId: mid, changes: { personId: { old: null, new: pid }, kind: { old: null, new: 'active' } } });
      audit.append({ ...actor, action: 'create', entity: 'registerAssignments', recordId: aid, changes: { personId: { old: null, new: pid }, registerId: { old: null, new: registers[i % 10] } } });
      maxPersonId = pid;
    }
  }).immediate();
  const sample = (db.prepare(`SELECT ra."personId" AS id FROM register_assignments ra WHERE ra."registerId" = ? ORDER BY ra."personId" LIMIT 8 OFFSET ?`).all(registers[0], Math.floor(n / 20)) as Array<{ id: number }>).map((r) => r.id);
  const config = loadConfig({ flags: { dataDir: join(dir, 'data'), listen: '127.0.0.1:0' } });
  const { daemon, identity } = await startChildDaemon({ storage, config, cleanup: () => rmSync(dir, { recursive: true, force: true }) });
  process.on('message', (m: { type: string }) => {
    if (m.type === 'cpu') {
      if ((m as { gc?: boolean }).gc && typeof globalThis.gc === 'function') globalThis.gc();
      const u = process.cpuUsage();
      process.send!({ type: 'cpu', micros: u.user + u.system, rss: process.memoryUsage().rss });
    }
  });
  process.send!({ type: 'ready', port: daemon.address().port, fingerprint: identity.fingerprint, club, persons: sample, registers, maxPersonId });
}

if (process.send) void main();
