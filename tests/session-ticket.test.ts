import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { startServer } from '../daemon/main/main.js';
import { TicketStore } from '../daemon/edge/tickets.js';
import { createClub } from '../storage/server/provisioning.js';
import { loadTicket, saveTicket, ticketFile } from '../client/tickets.js';

/**
 * Issue 16: a session ticket makes a run of separate `commusic` commands one password entry.
 * The ticket file is 0600, bound to the server key; `commusic logout`, a password change and
 * disabling the user revoke it on the server (a saved copy of the file no longer logs in).
 */
const BIN = new URL('../bin/', import.meta.url).pathname;

function run(args: string[], env: NodeJS.ProcessEnv, stdin = ''): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [join(BIN, 'commusic.js'), ...args], { timeout: 60_000, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    child.stdin!.end(stdin);
  });
}

test('commusic --ticket: one password for a run of commands; revoked by logout, password change and disable', { timeout: 180_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-ticket-'));
  const tickets = join(dir, 'tickets');
  const env = { COMMUSIC_TICKET_DIR: tickets, COMMUSIC_TICKET: '' };
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({ health: { enabled: false } }));
  const server = await startServer(loadConfig({ file, flags: { dataDir: join(dir, 'data'), listen: '127.0.0.1:0' } }), { logger: nullLogger() });
  try {
    const { id: club, oneTimePassword } = (await createClub(server.storage, { name: 'MV Ticket', adminUser: 'anna' })) as { id: string; oneTimePassword: string };
    const base = ['--server', `127.0.0.1:${server.daemon.address().port}`, '--fingerprint', server.identity.fingerprint, '--club', club];
    const anna = [...base, '--user', 'anna'];
    let r = await run([...anna, '--password-stdin', 'passwd', '--new-password-stdin'], env, `${oneTimePassword}\nanna-password-1\n`);
    assert.equal(r.code, 0, r.stderr);

    // Without a ticket a second command has no password (no terminal): a usage error.
    r = await run([...anna, 'whoami'], env);
    assert.equal(r.code, 2, r.stderr);

    // First command: the password from stdin; the ticket file is written 0600 in a 0700 folder.
    r = await run([...anna, '--ticket', '--password-stdin', 'whoami'], env, 'anna-password-1\n');
    assert.equal(r.code, 0, r.stderr);
    const tf = ticketFile(tickets, server.identity.fingerprint, club, 'anna');
    assert.equal(statSync(tf).mode & 0o777, 0o600);
    assert.equal(statSync(tickets).mode & 0o777, 0o700);
    // Second, separate invocation: no password anywhere, the ticket logs in.
    r = await run([...anna, '--ticket', 'whoami'], env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /anna in club/);
    // COMMUSIC_TICKET=1 is the same as --ticket; the change log records the resume as a login from a ticket.
    r = await run([...anna, 'log', '--action', 'login', '--json'], { ...env, COMMUSIC_TICKET: '1' });
    assert.equal(r.code, 0, r.stderr);
    const logins = JSON.parse(r.stdout).entries as { changes: { source?: string } | null }[];
    assert.equal(logins.filter((e) => e.changes?.source === 'ticket').length, 2, JSON.stringify(logins));

    // logout revokes on the server: a saved copy of the file no longer logs in.
    const copy = join(dir, 'copy');
    copyFileSync(tf, copy);
    r = await run([...anna, 'logout', '--json'], env);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(JSON.parse(r.stdout).ticketsRevoked >= 1);
    assert.equal(existsSync(tf), false);
    copyFileSync(copy, tf);
    r = await run([...anna, '--ticket', 'whoami'], env);
    assert.equal(r.code, 2, 'the revoked ticket is refused, and with no password the command stops');
    assert.equal(existsSync(tf), false, 'a refused ticket is deleted');
    r = await run([...anna, '--ticket', '--password-stdin', 'log', '--action', 'login.failed', '--json'], env, 'anna-password-1\n');
    assert.equal(r.code, 0, r.stderr);
    assert.ok((JSON.parse(r.stdout).entries as { changes: { source?: string } | null }[]).some((e) => e.changes?.source === 'ticket'), 'a refused ticket is a failed login');

    // A password change revokes the ticket.
    copyFileSync(tf, copy);
    r = await run([...anna, '--password-stdin', 'passwd', '--new-password-stdin'], env, 'anna-password-1\nanna-password-2\n');
    assert.equal(r.code, 0, r.stderr);
    copyFileSync(copy, tf);
    r = await run([...anna, '--ticket', 'whoami'], env);
    assert.equal(r.code, 2, 'a ticket from before the password change is refused');

    // Disabling a user revokes their tickets (enabling again does not bring them back).
    r = await run([...anna, '--ticket', '--password-stdin', 'users', 'add', 'bert', '--admin', '--user-password-stdin'], env, 'anna-password-2\nbert-password-1\nbert-password-1\n');
    assert.equal(r.code, 0, r.stderr);
    const bert = [...base, '--user', 'bert'];
    r = await run([...bert, '--password-stdin', 'passwd', '--new-password-stdin'], env, 'bert-password-1\nbert-password-2\n');
    assert.equal(r.code, 0, r.stderr);
    r = await run([...bert, '--ticket', '--password-stdin', 'whoami'], env, 'bert-password-2\n');
    assert.equal(r.code, 0, r.stderr);
    r = await run([...bert, '--ticket', 'whoami'], env);
    assert.equal(r.code, 0, r.stderr);
    r = await run([...anna, '--ticket', 'users', 'disable', 'bert'], env);
    assert.equal(r.code, 0, r.stderr);
    r = await run([...anna, '--ticket', 'users', 'enable', 'bert'], env);
    assert.equal(r.code, 0, r.stderr);
    r = await run([...bert, '--ticket', 'whoami'], env);
    assert.equal(r.code, 2, "bert's ticket from before the disable is refused");
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ticket files: bound to the server fingerprint, club and user; 0600 only', () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-ticket-file-'));
  try {
    const fpA = 'aa'.repeat(32);
    const fpB = 'bb'.repeat(32);
    const later = new Date(Date.now() + 600_000).toISOString();
    const t = { fingerprint: fpA, club: 'c1', user: 'anna', ticket: 'x'.repeat(43), idleExpiresAt: later, expiresAt: later, idleMs: 900_000 };
    const f = saveTicket(dir, t);
    assert.equal(loadTicket(dir, fpA, 'c1', 'anna')?.ticket, t.ticket);
    assert.equal(loadTicket(dir, fpB, 'c1', 'anna'), undefined, 'another server key never gets it');
    assert.equal(loadTicket(dir, fpA, 'c2', 'anna'), undefined);
    assert.equal(loadTicket(dir, fpA, 'c1', 'bert'), undefined);
    // Planted under server B's file name, the recorded fingerprint still says A: refused.
    copyFileSync(f, ticketFile(dir, fpB, 'c1', 'anna'));
    assert.equal(loadTicket(dir, fpB, 'c1', 'anna'), undefined);
    // A file others can read is not trusted.
    rmSync(f);
    writeFileSync(f, `${JSON.stringify(t)}\n`, { mode: 0o644 });
    chmodSync(f, 0o644);
    assert.equal(loadTicket(dir, fpA, 'c1', 'anna'), undefined);
    // Expired: refused and deleted.
    rmSync(f);
    saveTicket(dir, { ...t, idleExpiresAt: new Date(Date.now() - 1000).toISOString() });
    assert.equal(loadTicket(dir, fpA, 'c1', 'anna'), undefined);
    assert.equal(existsSync(f), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('daemon ticket store: idle and absolute expiry, other club, revoke, per-user bound', () => {
  const s = new TicketStore(1000, 5000);
  const g = { clubId: 'c1', userId: 1, credVersion: 3 };
  const { ticket } = s.issue(g, 0);
  assert.deepEqual(s.use('c1', ticket, 900), g);
  assert.equal(s.use('c2', ticket, 950), undefined, 'another club');
  assert.deepEqual(s.use('c1', ticket, 1800), g, 'idle time counts from the last use');
  assert.equal(s.use('c1', ticket, 2900), undefined, 'idle expiry');
  const t2 = s.issue(g, 0).ticket;
  for (let t = 900; t < 5000; t += 900) assert.ok(s.use('c1', t2, t));
  assert.equal(s.use('c1', t2, 5001), undefined, 'absolute expiry');
  for (let i = 0; i < 40; i++) s.issue(g, 6000);
  assert.ok(s.size <= 16, 'at most 16 per user');
  assert.equal(s.revokeUser('c1', 1), 16);
  assert.equal(s.size, 0);
});
