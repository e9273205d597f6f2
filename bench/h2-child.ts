/**
 * The HTTP/2 baseline (issue 13): what a client would otherwise be built on. node:http2 over
 * TLS 1.3 (self-signed RSA-2048 certificate, as the TLS echo), JSON bodies, in its own process,
 * on the same club data as ours: a fresh data folder seeded exactly like bench/data-child.ts
 * (one club, its administrator, 8 persons) through the same storage layer.
 *
 *   POST /ping            {data?: base64}                 -> {time, data?}
 *   POST /auth.login      {club, user, password}          -> {token}   (scrypt check, once)
 *   POST /persons.get     {id}, authorization: Bearer tok -> {record}
 *   POST /persons.update  {id, notes}, Bearer tok         -> {record, changed}
 *
 * The session is an in-memory token lookup (no per-request user read); reads and writes go
 * through the same storage functions as the daemon's handlers (getRecord, updateRecord with the
 * same signed, hash-chained change log, synchronous=FULL), so a comparison measures the channel
 * and request path, not the store. TLS session tickets are not issued (SSL_OP_NO_TICKET) and
 * the clients never offer a session, so every handshake is a full one.
 * IPC as bench/server-child.ts: `ready` {port, certPem, club, persons}, then `cpu`, `exit`.
 */
import { constants as cryptoConstants, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createSecureServer, type Http2ServerRequest, type Http2ServerResponse } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateIdentity, signTranscript } from '../crypto/identity.js';
import { verifyPassword } from '../crypto/password.js';
import { AuditLog } from '../storage/club/audit-log.js';
import { updateRecord } from '../storage/club/club-data.js';
import { getRecord } from '../storage/club/data-rows.js';
import { createClub } from '../storage/server/provisioning.js';
import { openStorage } from '../storage/server/storage.js';
import { getUserByName } from '../storage/club/users.js';
import { BENCH_ADMIN } from './data-child.js';
import { selfSignedRsa2048 } from './server-child.js';

interface Session {
  user: string;
  actor: { user: string; ip: string; session: string };
}

const MAX_BODY = 1 << 20;

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-bench-h2-'));
  const storage = await openStorage({ dataDir: join(dir, 'data'), create: true, scryptLog2N: 10 });
  const { id: club } = await createClub(storage, { name: 'MV Bench', adminUser: BENCH_ADMIN.user, adminPassword: BENCH_ADMIN.password });
  const store = storage.openClub(club);
  const db = store.db;
  const ins = db.prepare('INSERT INTO persons (firstName, lastName, city, photoConsent, blocked) VALUES (?, ?, ?, 0, 0) RETURNING id');
  const persons = Array.from({ length: 8 }, (_, i) => (ins.get(`Vorname${i}`, `Nachname${i}`, 'Graz') as { id: number }).id);
  const identity = generateIdentity();
  const audit = new AuditLog(db, club, { signer: { sign: (b) => signTranscript(identity, b), fingerprint: identity.fingerprint }, anchors: storage });
  const sessions = new Map<string, Session>();
  const scope = { kind: 'all', hideBlocked: true } as const;

  const { keyPem, certPem } = selfSignedRsa2048();
  const server = createSecureServer({
    key: keyPem,
    cert: certPem,
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
    settings: { maxConcurrentStreams: 256 },
  });
  server.on('tlsClientError', () => {});
  server.on('sessionError', () => {});

  const json = (res: Http2ServerResponse, status: number, body: unknown) => {
    const s = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s) });
    res.end(s);
  };
  const authed = (req: Http2ServerRequest): Session | undefined => {
    const h = req.headers.authorization;
    return typeof h === 'string' && h.startsWith('Bearer ') ? sessions.get(h.slice(7)) : undefined;
  };

  const handle = async (req: Http2ServerRequest, res: Http2ServerResponse, body: unknown): Promise<void> => {
    const p = (body ?? {}) as Record<string, unknown>;
    switch (req.url) {
      case '/ping':
        return json(res, 200, typeof p.data === 'string' ? { time: Date.now(), data: p.data } : { time: Date.now() });
      case '/auth.login': {
        const u = p.club === club && typeof p.user === 'string' ? getUserByName(db, p.user) : undefined;
        if (!u || u.disabled || typeof p.password !== 'string' || !(await verifyPassword(p.password, u.passwordHash))) return json(res, 401, { error: 'UNAUTHENTICATED' });
        const token = randomBytes(32).toString('base64url');
        sessions.set(token, { user: u.username, actor: { user: u.username, ip: req.socket.remoteAddress ?? '', session: token.slice(0, 8) } });
        return json(res, 200, { token });
      }
      case '/persons.get': {
        if (!authed(req)) return json(res, 401, { error: 'UNAUTHENTICATED' });
        if (typeof p.id !== 'number') return json(res, 400, { error: 'BAD_REQUEST' });
        const record = getRecord(db, 'persons', p.id, scope);
        return record ? json(res, 200, { record }) : json(res, 404, { error: 'NOT_FOUND' });
      }
      case '/persons.update': {
        const s = authed(req);
        if (!s) return json(res, 401, { error: 'UNAUTHENTICATED' });
        if (typeof p.id !== 'number' || typeof p.notes !== 'string') return json(res, 400, { error: 'BAD_REQUEST' });
        const r = updateRecord(db, 'persons', p.id, { notes: p.notes }, { scope, audit, actor: s.actor });
        return json(res, 200, { record: r.record, changed: Object.keys(r.changes) });
      }
      default:
        return json(res, 404, { error: 'UNKNOWN_COMMAND' });
    }
  };

  server.on('request', (req: Http2ServerRequest, res: Http2ServerResponse) => {
    const parts: Buffer[] = [];
    let n = 0;
    req.on('data', (d: Buffer) => {
      n += d.length;
      if (n > MAX_BODY) req.destroy();
      else parts.push(d);
    });
    req.on('end', () => {
      let body: unknown;
      try {
        body = n === 0 ? {} : JSON.parse(Buffer.concat(parts).toString('utf8'));
      } catch {
        return json(res, 400, { error: 'BAD_REQUEST' });
      }
      handle(req, res, body).catch(() => json(res, 500, { error: 'INTERNAL' }));
    });
  });
  await new Promise<void>((r) => server.listen({ host: '127.0.0.1', port: 0, backlog: 4096 }, () => r()));
  const a = server.address();
  const stop = (seq?: number) => {
    server.close();
    storage.close();
    rmSync(dir, { recursive: true, force: true });
    if (seq !== undefined && process.connected) process.send!({ type: 'reply', seq }, () => process.exit(0));
    else process.exit(0);
  };
  process.on('disconnect', () => stop());
  process.on('message', (m: { type: string; seq?: number }) => {
    if (m.type === 'exit') stop(m.seq);
    if (m.type === 'cpu') {
      const u = process.cpuUsage();
      process.send!({ type: 'reply', seq: m.seq, cpuMicros: u.user + u.system });
    }
  });
  process.send!({ type: 'ready', port: typeof a === 'object' && a ? a.port : 0, certPem, club, persons });
}

main().catch((e: unknown) => {
  console.error('bench h2 child failed:', e);
  process.exit(1);
});
