/**
 * The `commusic` command tree (club members, club administrators, scripts). bin/commusic.ts runs
 * it; tests walk it. buildProgram() makes a fresh tree: `commusic batch` parses each of its lines
 * with a new tree that shares one logged-in session (one login for a run of commands).
 */
import type { Command } from 'commander';
import { connect, type Connection } from '../client/connection.js';
import { canonicalServerName, defaultKnownServersFile, lookupKnownServerPins } from '../client/known-servers.js';
import { listAll, pages } from '../client/paging.js';
import { loginWithRetries } from './client-login.js';
import { normalizeFingerprint } from '../crypto/identity.js';
import { loadTicket, removeTicket, saveTicket, ticketDir, touchTicket } from '../client/tickets.js';
import { fail, getSecret, keyValues, newProgram, parseHostPort, printResult, usage } from './cli-util.js';
import { registerCallCommand } from './client-call.js';
import { registerBatchCommand } from './client-batch.js';
import { registerCompletionCommand } from './cli-docs.js';
import { registerClubDataCommands } from './client-club.js';
import type { ClientSession, Globals, SessionHolder } from './client-session.js';
import { registerUserCommands } from './client-users.js';

export type { Globals, SessionHolder } from './client-session.js';
export { parseWhen } from './client-club.js';

interface WhoAmI {
  club: string;
  user: { id: number; username: string; mustChangePassword: boolean };
}

/** Builds the whole `commusic` program; `holder` is reused across batch lines. */
export function buildProgram(holder: SessionHolder = {}): Command {
  const program = newProgram('commusic', 'ComMusic client command line: members, club administrators, scripts')
    .option('--server <host:port>', 'server address, or several servers of one cluster as HOST:PORT,HOST:PORT,... tried in turn (env COMMUSIC_SERVER)')
    .option('--fingerprint <sha256>', 'expected server key fingerprint (env COMMUSIC_FINGERPRINT)')
    .option('--tofu', 'trust the server key on first use and remember it in the known-servers file (which follows signed identity key rollovers); with --fingerprint: trust that key and record it there')
    .option('--known-servers <file>', 'known-servers file: --tofu records keys in it; without --fingerprint, a server recorded there is checked against its key', defaultKnownServersFile())
    .option('--bind <address>', 'local source address to connect from (multi-homed hosts)')
    .option('--timeout <ms>', 'connect and request timeout in milliseconds', '10000')
    .option('--max-protocol <n>', 'highest protocol version to offer: 3 (handshakes signed by the server\'s short-lived delegated credential), 2 or 1 for servers that predate it', '3')
    .option('--club <id>', 'club to log in to (env COMMUSIC_CLUB)')
    .option('--user <name>', 'user name (env COMMUSIC_USER)')
    .option('--password-stdin', 'read the login password from standard input (first line)')
    .option('--password-file <file>', 'read the login password from this file (first line); else asked on the terminal')
    .option('--ticket', 'keep a session ticket (15 min idle, 8 h at most, mode 0600, bound to the server key) so the next commands need no password; env COMMUSIC_TICKET=1; "commusic logout" revokes it');

  const g = () => holder.globals ?? program.opts<Globals>();

  async function open(): Promise<Connection> {
    if (holder.conn) return holder.conn;
    const o = g();
    const server = o.server ?? process.env['COMMUSIC_SERVER'];
    if (!server) usage('--server HOST:PORT is required');
    const fingerprint = o.fingerprint ?? process.env['COMMUSIC_FINGERPRINT'];
    if (fingerprint && !normalizeFingerprint(fingerprint)) usage('--fingerprint must be the server key\'s SHA-256 as 64 hex digits (from "commusicctl keys show")');
    const servers = server.split(',').map(parseHostPort);
    // Without --fingerprint or --tofu, a server already in the known-servers file is checked
    // against the key pinned there (as ssh reads known_hosts); an unknown one is refused, never
    // trusted on first use silently.
    const known = (s: { host: string; port: number }) => lookupKnownServerPins(o.knownServers!, canonicalServerName(`${s.host.includes(':') ? `[${s.host}]` : s.host}:${s.port}`)).length > 0;
    if (!fingerprint && !o.tofu && !servers.every(known)) usage('give --fingerprint (from "commusicctl keys show"), or --tofu to trust on first use');
    if (servers.length > 32) usage('--server takes at most 32 servers');
    const timeout = Number(o.timeout);
    if (!Number.isInteger(timeout) || timeout < 100 || timeout > 3_600_000) usage('--timeout is milliseconds between 100 and 3600000');
    const maxVersion = Number(o.maxProtocol);
    if (maxVersion !== 1 && maxVersion !== 2 && maxVersion !== 3) usage('--max-protocol is 1, 2 or 3');
    const connectTo = (s: { host: string; port: number }) =>
      connect({
        host: s.host,
        port: s.port,
        // --tofu with --fingerprint: only that key, recorded in the file (after checking a new key out of band).
        ...(fingerprint ? { fingerprint } : {}),
        ...(!fingerprint || o.tofu ? { knownServersFile: o.knownServers! } : {}),
        connectTimeoutMs: timeout,
        requestTimeoutMs: timeout,
        maxVersion,
        ...(o.bind ? { localAddress: o.bind } : {}),
      });
    holder.connectTo = connectTo;
    // Several servers (one cluster, one fingerprint): the first that answers (PROTOCOL.md 6.5).
    let last: unknown;
    for (const s of servers) {
      try {
        holder.conn = await connectTo(s);
        break;
      } catch (e) {
        last = e;
        const code = (e as { code?: string }).code;
        if (code !== 'CONNECT_FAILED' && code !== 'CONNECT_TIMEOUT' && code !== 'HANDSHAKE_FAILED') throw e;
      }
    }
    if (!holder.conn) throw last;
    return holder.conn;
  }

  /**
   * Connects and logs in (once per holder). A login that must change its password is led
   * through the change on a terminal; a script is told to run `commusic passwd`.
   */
  async function session(o: { forPasswd?: boolean } = {}): Promise<{ conn: Connection; password?: string }> {
    if (holder.loggedIn && holder.conn) return { conn: holder.conn };
    const club = g().club ?? process.env['COMMUSIC_CLUB'];
    const user = g().user ?? process.env['COMMUSIC_USER'];
    if (!club || !user) usage('this command needs a login: give --club and --user (env COMMUSIC_CLUB, COMMUSIC_USER)');
    const useTicket = g().ticket === true || process.env['COMMUSIC_TICKET'] === '1';
    // The password is read before connecting (a missing source is a usage error, nothing sent);
    // with a ticket a prompt waits until the ticket failed, but stdin or a file is still read
    // first so later secrets on stdin keep their line numbers.
    const promptLater = useTicket && !o.forPasswd && !g().passwordStdin && !g().passwordFile;
    let password = promptLater ? undefined : await getSecret('password', 'password', { stdin: g().passwordStdin, file: g().passwordFile });
    let conn = await open();
    const dir = ticketDir();
    if (useTicket && !o.forPasswd) {
      // Looked up by the fingerprint this connection verified: never sent to another server key.
      const t = loadTicket(dir, conn.fingerprint, club, user);
      if (t) {
        try {
          await conn.request('auth.resume', { club, ticket: t.ticket });
          holder.loggedIn = true;
          touchTicket(dir, t);
          return { conn, ...(password ? { password } : {}) };
        } catch (e) {
          if ((e as { code?: string }).code !== 'UNAUTHENTICATED') throw e;
          removeTicket(dir, conn.fingerprint, club, user);
        }
      }
    }
    password ??= (await getSecret('password', 'password', {}))!;
    const r = await loginFollowingRedirects(conn, { club, user, password });
    conn = holder.conn!;
    holder.loggedIn = true;
    const must = (r.payload as { mustChangePassword?: boolean }).mustChangePassword === true;
    if (must && !o.forPasswd) {
      if (!process.stdin.isTTY) fail('this account must change its password before anything else: run "commusic passwd" (the new password from a prompt, --new-password-stdin or --new-password-file)', 1, 'MUST_CHANGE_PASSWORD');
      process.stderr.write('This account must change its password before anything else.\n');
      const next = (await getSecret('new password', 'new-password', {}, { confirm: true }))!;
      await conn.request('users.changeOwnPassword', { oldPassword: password, newPassword: next });
      process.stderr.write('password changed\n');
    }
    if (o.forPasswd) removeTicket(dir, conn.fingerprint, club, user);
    else if (useTicket) {
      const t = (await conn.request('auth.ticket', {})).payload as { ticket: string; idleExpiresAt: string; expiresAt: string; idleTimeoutMs: number };
      saveTicket(dir, { fingerprint: conn.fingerprint, club, user, ticket: t.ticket, idleExpiresAt: t.idleExpiresAt, expiresAt: t.expiresAt, idleMs: t.idleTimeoutMs });
    }
    return { conn, password };
  }

  /** auth.login, following redirects and retrying across a takeover or drain (bin/client-login.ts). */
  async function loginFollowingRedirects(first: Connection, p: { club: string; user: string; password: string }): Promise<{ payload: unknown }> {
    let conn = first;
    const reconnect = async (to: { host: string; port: number } | undefined) => {
      await conn.close().catch(() => undefined);
      holder.conn = undefined;
      holder.conn = conn = to ? await holder.connectTo!(to) : await open();
      return conn;
    };
    return loginWithRetries(() => conn, p, holder.connectTo ? reconnect : undefined);
  }

  async function call(command: string, payload: unknown): Promise<any> {
    const { conn } = await session();
    return (await conn.request(command, payload)).payload;
  }

  /** Every item of a list command, following its continuation (answers are cut by bytes, PROTOCOL.md 7.4). */
  async function callAll<T>(command: string, payload: Record<string, unknown>, key = 'items', max = Infinity): Promise<T[]> {
    const { conn } = await session();
    return listAll<T>(conn, command, payload, key, max);
  }

  /** Every page of a list command (for answers with several lists, exports.club). */
  async function* callPages(command: string, payload: Record<string, unknown>): AsyncGenerator<Record<string, unknown>> {
    const { conn } = await session();
    yield* pages(conn, command, payload);
  }

  async function done(): Promise<void> {
    if (holder.shared) return;
    const conn = holder.conn;
    holder.conn = undefined;
    if (!conn) return;
    if (holder.loggedIn) await conn.request('auth.logout', {}).catch(() => undefined);
    holder.loggedIn = false;
    await conn.close();
  }

  /** Wraps an action so the connection is closed (and the session logged out) afterwards. */
  const act =
    <A extends unknown[]>(fn: (...a: A) => Promise<void>) =>
    async (...a: A): Promise<void> => {
      try {
        await fn(...a);
      } finally {
        await done();
      }
    };

  program
    .command('ping')
    .description('handshake with the server and measure the round-trip time of a ping')
    .option('--count <n>', 'number of pings (1..100)', '1')
    .option('--json', 'print JSON')
    .action(
      act(async (o: { count: string; json?: boolean }) => {
        const n = Number(o.count);
        if (!Number.isInteger(n) || n < 1 || n > 100) usage('--count is a whole number from 1 to 100');
        const conn = await open();
        const times: number[] = [];
        for (let i = 0; i < n; i++) times.push(await conn.ping());
        if (o.json) process.stdout.write(`${JSON.stringify({ ok: true, fingerprint: conn.fingerprint, protocolVersion: conn.version, rttMs: times })}\n`);
        else for (const t of times) process.stdout.write(`pong from ${g().server ?? process.env['COMMUSIC_SERVER']}: time=${t.toFixed(3)} ms\n`);
      }),
    );

  program
    .command('info')
    .description("show the server's name, version, protocol version and commands")
    .option('--json', 'print JSON')
    .action(
      act(async (o: { json?: boolean }) => {
        const conn = await open();
        const r = (await conn.request('server.info', {})).payload as Record<string, unknown>;
        printResult(r, o.json, (s) => keyValues(Object.fromEntries(Object.entries(s).map(([k, v]) => [k, Array.isArray(v) ? v.join(' ') : v]))));
      }),
    );

  program
    .command('logout')
    .description('revoke your session tickets on the server and delete the cached one (see --ticket)')
    .option('--json', 'print JSON')
    .action(
      act(async (o: { json?: boolean }) => {
        const club = g().club ?? process.env['COMMUSIC_CLUB'];
        const user = g().user ?? process.env['COMMUSIC_USER'];
        if (!club || !user) usage('logout needs --club and --user (env COMMUSIC_CLUB, COMMUSIC_USER)');
        const conn = await open();
        const dir = ticketDir();
        const t = loadTicket(dir, conn.fingerprint, club, user);
        let revoked = 0;
        if (t) {
          removeTicket(dir, conn.fingerprint, club, user);
          try {
            await conn.request('auth.resume', { club, ticket: t.ticket });
            revoked = ((await conn.request('auth.logout', { revokeTicket: true })).payload as { ticketsRevoked?: number }).ticketsRevoked ?? 0;
          } catch (e) {
            if ((e as { code?: string }).code !== 'UNAUTHENTICATED') throw e;
          }
        }
        printResult({ cachedTicket: Boolean(t), ticketsRevoked: revoked }, o.json, () => (t ? `logged out: ${revoked} ticket(s) revoked, the cached ticket deleted` : 'no cached ticket for this server, club and user'));
      }),
    );

  program
    .command('whoami')
    .description('the logged-in user, club and rights')
    .option('--json', 'print JSON')
    .action(
      act(async (o: { json?: boolean }) => {
        const r = (await call('auth.whoami', {})) as WhoAmI & { admin: boolean };
        printResult(r, o.json, (s) => `${s.user.username} in club ${s.club}${s.admin ? ' (administrator)' : ''}`);
      }),
    );

  program
    .command('passwd')
    .description('change your own password (asked twice without echo; the current one is the login password)')
    .option('--new-password-stdin', 'read the new password from standard input (the line after the login password)')
    .option('--new-password-file <file>', 'read the new password from this file (first line)')
    .option('--json', 'print JSON')
    .action(
      act(async (o: { newPasswordStdin?: boolean; newPasswordFile?: string; json?: boolean }) => {
        const { conn, password } = await session({ forPasswd: true });
        const next = (await getSecret('new password', 'new-password', { stdin: o.newPasswordStdin, file: o.newPasswordFile }, { confirm: true }))!;
        const r = (await conn.request('users.changeOwnPassword', { oldPassword: password!, newPassword: next })).payload;
        printResult(r, o.json, () => 'password changed');
      }),
    );

  const s: ClientSession = { call, callAll, callPages, session, act };
  registerUserCommands(program, s);
  registerClubDataCommands(program, s);

  registerCallCommand(program, session, open, done, () => Boolean((g().club ?? process.env['COMMUSIC_CLUB']) || (g().user ?? process.env['COMMUSIC_USER'])));
  if (!holder.shared) registerBatchCommand(program, holder, () => program.opts<Globals>(), buildProgram, done);
  registerCompletionCommand(program);
  return program;
}
