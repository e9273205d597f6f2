/**
 * The daemon's side of the cluster (issue 14): every club command passes two gates.
 *
 * - Ownership gate (before the handler): a request for a club this server does not serve is
 *   answered with MOVED naming the owner's advertised HOST:PORT (PROTOCOL.md "Several servers"),
 *   or UNAVAILABLE while no server serves it (takeover under way). auth.login/auth.resume are
 *   routed by the club in their payload, every other command by the session's club.
 * - Output gate (after the handler): what the command's transactions changed is appended to the
 *   club's log in etcd before the answer leaves (ClusterNode.commit). A failed append turns the
 *   answer into UNAVAILABLE or MOVED: the client retries with the same request key.
 *
 * Request keys: a request may carry `rk` (PROTOCOL.md "Request keys"; the dispatcher takes it out
 * of the payload before the schema check). When a command with a key succeeds, its answer (without
 * one-time passwords) is stored with the user's id in the club's `request_keys` table in the same
 * store (replicated like the change, shipped before the answer); a retry with the same key by the
 * same user, on this or any later primary, gets the stored answer and the command is not run
 * again; another user gets CONFLICT.
 *
 * A command whose write comes after the club moved away (it waited on a password hash, an upload,
 * a grouped write) is refused inside its transaction (cluster/capture.ts guardWrites) and answered
 * MOVED or UNAVAILABLE like a failed append.
 *
 * Commands with no club (ping, server.schema, operator commands) pass untouched.
 */
import { encode, decode } from 'cborg';
import { isNotServedWrite } from '../../cluster/capture.js';
import { ClusterError } from '../../cluster/errors.js';
import type { ClusterNode } from '../../cluster/node.js';
import type { Storage } from '../../storage/server/storage.js';
import type { Db } from '../../storage/engine/sqlcipher.js';
import { currentClub, getSession } from '../club/session.js';
import { CommandError } from '../edge/command-errors.js';
import { requestKeyOf, type CommandContext, type CommandResult, type CommandSpec, type Dispatcher } from '../edge/dispatcher.js';

/** Stored answers larger than this are not kept (the retry then runs the command again). */
export const MAX_STORED_ANSWER_BYTES = 64 * 1024;
/** Request keys are kept this long, and at most MAX_REQUEST_KEYS per club. */
export const REQUEST_KEY_TTL_MS = 24 * 3600 * 1000;
export const MAX_REQUEST_KEYS = 10_000;

const LOGIN_COMMANDS = new Set(['auth.login', 'auth.resume']);
/**
 * Club commands that change the club's row in server.db (not its store, so not its log): the
 * row is published to every member through the registry record before the answer, or a
 * takeover would lose the change (the backup passphrase's public key, the mail addresses).
 */
const ROW_COMMANDS = new Set(['backup.setPassphrase']);

function ensureRequestKeys(db: Db): void {
  db.exec(`CREATE TABLE IF NOT EXISTS request_keys (
    rk TEXT PRIMARY KEY CHECK (length(rk) BETWEEN 16 AND 64),
    command TEXT NOT NULL CHECK (length(command) <= 64),
    answer BLOB NOT NULL CHECK (length(answer) <= ${MAX_STORED_ANSWER_BYTES}),
    at INTEGER NOT NULL
  ) STRICT`);
}

/** Answer fields never stored with a request key (a retried answer comes without them). */
const SECRET_ANSWER_FIELDS = ['oneTimePassword'];

/**
 * The stored answer of a request key, if this club has one for the same command made by the same
 * user. A key is bound to the user who used it first: another user (or a row from before the
 * binding) gets CONFLICT, never the answer, which was made under that user's rights.
 */
function storedAnswer(db: Db, rk: string, command: string, userId: number | undefined): unknown {
  ensureRequestKeys(db);
  const row = db.prepare('SELECT command, answer FROM request_keys WHERE rk = ?').get(rk) as { command: string; answer: Buffer } | undefined;
  if (!row) return undefined;
  const stored = decode(row.answer) as { u?: unknown; p?: unknown } | null;
  if (row.command !== command || stored === null || typeof stored !== 'object' || stored.u !== (userId ?? null)) {
    throw new CommandError('CONFLICT', 'this request key was used for another command or by another user');
  }
  return { payload: stored.p };
}

function storeAnswer(db: Db, rk: string, command: string, userId: number | undefined, payload: unknown, now: number): void {
  let bytes: Uint8Array;
  try {
    const kept = payload !== null && typeof payload === 'object' && !Array.isArray(payload)
      ? Object.fromEntries(Object.entries(payload as Record<string, unknown>).filter(([k]) => !SECRET_ANSWER_FIELDS.includes(k)))
      : payload;
    bytes = encode({ u: userId ?? null, p: kept ?? null });
  } catch {
    return;
  }
  if (bytes.length > MAX_STORED_ANSWER_BYTES) return;
  ensureRequestKeys(db);
  db.transaction(() => {
    db.prepare('INSERT OR REPLACE INTO request_keys (rk, command, answer, at) VALUES (?, ?, ?, ?)').run(rk, command, Buffer.from(bytes), now);
    db.prepare('DELETE FROM request_keys WHERE at < ?').run(now - REQUEST_KEY_TTL_MS);
    const n = (db.prepare('SELECT count(*) AS n FROM request_keys').get() as { n: number }).n;
    if (n > MAX_REQUEST_KEYS) db.prepare('DELETE FROM request_keys WHERE rk IN (SELECT rk FROM request_keys ORDER BY at LIMIT ?)').run(n - MAX_REQUEST_KEYS);
  })();
}

/** A ClusterError from the output gate as the client's error. */
function wireError(node: ClusterNode, club: string, e: unknown): CommandError {
  if (e instanceof ClusterError || isNotServedWrite(e)) {
    const r = node.route(club);
    if (r.kind === 'redirect') return new CommandError('MOVED', `${r.address} club served by another server`);
    return new CommandError('UNAVAILABLE', 'the club is being taken over by another server; retry shortly');
  }
  return e instanceof CommandError ? e : new CommandError('INTERNAL', 'internal error');
}

/** Neither the cluster's registry nor this member's own server database knows `club`. */
function isUnknownEverywhere(node: ClusterNode, storage: Storage, club: string): boolean {
  const r = node.route(club);
  return r.kind === 'unavailable' && r.reason === 'unknown club' && storage.server.getClub(club) === undefined;
}

/** The ownership gate alone: throws MOVED or UNAVAILABLE unless this server serves `club`. */
export function checkRoute(node: ClusterNode, club: string): void {
  const r = node.route(club);
  if (r.kind === 'serve') return;
  if (r.kind === 'redirect') throw new CommandError('MOVED', `${r.address} club served by another server`);
  throw new CommandError('UNAVAILABLE', r.reason === 'unknown club' ? 'the club is not served right now; retry shortly' : `the club is not served right now (${r.reason}); retry shortly`);
}

/**
 * Wrap every registered command with the two gates. Call after all commands are registered;
 * until `nodeRef` returns the node (it joins after the listener is up), club requests get
 * UNAVAILABLE.
 */
export function installClusterGate(d: Dispatcher, nodeRef: () => ClusterNode | undefined, storage: Storage, now: () => number = Date.now): void {
  d.wrapAll((spec: CommandSpec) => async (payload: unknown, ctx: CommandContext): Promise<CommandResult> => {
    const club = LOGIN_COMMANDS.has(spec.name) ? (payload as { club?: unknown }).club : currentClub(ctx);
    if (typeof club !== 'string') return spec.handler(payload, ctx);
    const node = nodeRef();
    if (!node) throw new CommandError('UNAVAILABLE', 'this server is joining the cluster; retry shortly');
    if (LOGIN_COMMANDS.has(spec.name) && isUnknownEverywhere(node, storage, club)) {
      // A club no member knows: answered as a single server answers it (the same UNAUTHENTICATED
      // after the same work, a `login` violation), so the cluster does not tell an outsider which
      // club ids exist (UNAVAILABLE, counted nowhere, did).
      return spec.handler(payload, ctx);
    }
    checkRoute(node, club);
    const rk = requestKeyOf(payload);
    const userId = getSession(ctx)?.userId;
    if (rk !== undefined && !LOGIN_COMMANDS.has(spec.name)) {
      const stored = storedAnswer(storage.openClub(club).db, rk, spec.name, userId);
      if (stored !== undefined) return stored as CommandResult;
    }
    let result: CommandResult;
    try {
      result = await spec.handler(payload, ctx);
    } catch (e) {
      // The club moved away while the command waited: its write was refused (cluster/capture.ts guardWrites).
      throw isNotServedWrite(e) ? wireError(node, club, e) : e;
    }
    try {
      // Stored for every keyed request that succeeded, not only when the club has changes
      // pending: under a group commit another request's output gate may already have shipped
      // this request's changes, and its retry must still find the answer.
      if (rk !== undefined && !result.download && !LOGIN_COMMANDS.has(spec.name)) {
        storeAnswer(storage.openClub(club).db, rk, spec.name, userId, result.payload, now());
      }
      await node.commit(club);
      if (ROW_COMMANDS.has(spec.name)) await node.registerClub(club);
    } catch (e) {
      throw wireError(node, club, e);
    }
    return result;
  });
}
