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
 * one-time passwords) is stored with the user's id in the club's `request_answers` table in the same
 * transaction as the command's change (daemon/edge/keyed-answer.ts; replicated like the change,
 * shipped before the answer, so no takeover can find the one without the other); a command that
 * changes the club's row instead stores it in server.db in the transaction of the row's change,
 * and the answer travels with the row in its registry record. A retry with the same key by the
 * same user, on this or any later primary, gets the stored answer and the command is not run
 * again; another user gets CONFLICT. A stored answer goes out only after the handler's own
 * session check (requirePrincipal: idle timeout, suspended club, deleted, disabled or reset user)
 * passed, and only while the user's rights are those it was made under (rightsFingerprint);
 * otherwise the command runs again and its handler decides (FORBIDDEN for a withdrawn right). A
 * command that stored no answer in a transaction of its own changed nothing (a read): its retry
 * runs it again. Session commands (auth.*) ignore a key: their effect is the connection's session.
 *
 * A command whose write comes after the club moved away (it waited on a password hash, an upload,
 * a grouped write) is refused inside its transaction (cluster/capture.ts guardWrites) and answered
 * MOVED or UNAVAILABLE like a failed append.
 *
 * Commands with no club (ping, server.schema, operator commands) pass untouched.
 */
import { isNotServedWrite } from '../../cluster/capture.js';
import { ClusterError } from '../../cluster/errors.js';
import type { ClusterNode } from '../../cluster/node.js';
import type { Db } from '../../storage/engine/sqlcipher.js';
import type { Storage } from '../../storage/server/storage.js';
import { answerRow, REQUEST_KEY_TTL_MS, requestFingerprint, storedAnswerOf, type AnswerRow } from '../../storage/club/request-keys.js';
import { rowAnswerRow } from '../../storage/server/row-answers.js';

/** The request-key bounds (PROTOCOL.md "Request keys"), kept with the table: storage/club/request-keys.ts. */
export { MAX_ANSWER_BYTES_PER_USER, MAX_REQUEST_KEYS, MAX_REQUEST_KEYS_PER_USER, MAX_STORED_ANSWER_BYTES, REQUEST_KEY_TTL_MS } from '../../storage/club/request-keys.js';
import { runKeyed, type KeyedRequest } from '../edge/keyed-answer.js';
import { currentClub, getSession, requirePrincipal, rightsFingerprint, type ClubServices } from '../club/session.js';
import { CommandError } from '../edge/command-errors.js';
import { requestKeyOf, type CommandContext, type CommandResult, type CommandSpec, type Dispatcher } from '../edge/dispatcher.js';

const LOGIN_COMMANDS = new Set(['auth.login', 'auth.resume']);
/**
 * Commands whose effect is the connection's session (login, logout, tickets kept in memory), not
 * a club's data: a request key is not honoured for them. A stored answer would hand a retry on
 * a new session the old session's result (a logout that logs nothing out), and `auth.ticket`'s
 * answer is a secret the daemon keeps only hashed.
 */
const isSessionCommand = (name: string) => name.startsWith('auth.');
/**
 * Club commands that change the club's row in server.db (not its store, so not its log): the
 * row is published to every member through the registry record before the answer, or a
 * takeover would lose the change (the backup passphrase's public key, the mail addresses).
 */
const ROW_COMMANDS = new Set(['backup.setPassphrase']);

/**
 * The stored answer of a request key, if this club has one that may go to this request: in its
 * store (storage/club/request-keys.ts) or, for a command that changed the club's row, in
 * server.db (storage/server/row-answers.ts). When there is one, the handler's own session check
 * runs first (requirePrincipal, with its errors: the idle timeout, a deleted, disabled or reset
 * user end the session as the handler would; a suspended club lets the handler refuse). A key of
 * another user or command is CONFLICT. An answer goes out only when the user's rights
 * fingerprint is the one it was made under (every right check, section scopes included, decides
 * as it did), the payload is the one it answered, and the user need not change their password
 * first; otherwise undefined: the handler runs and decides.
 */
function storedAnswer(services: ClubServices, club: string, ctx: CommandContext, k: KeyedRequest): CommandResult | undefined {
  let db: Db;
  try {
    db = services.storage.openClub(club).db;
  } catch {
    return undefined; // a suspended or deleted club: the handler refuses as it does (openClubFor)
  }
  // An answer past REQUEST_KEY_TTL_MS is gone, though not yet pruned (pruning runs when an answer is stored).
  const oldest = k.now() - REQUEST_KEY_TTL_MS;
  const rows = [answerRow(db, k.rk), rowAnswerRow(services.storage.server.db, club, k.rk)].filter((r): r is AnswerRow => r !== undefined && r.at >= oldest);
  if (rows.length === 0) return undefined;
  const p = requirePrincipal(services, ctx, { allowMustChange: true });
  // The payload's fingerprint too: a stored answer goes only to the request it answered (a
  // `club` field or any other field the handler checks is the one it checked).
  const b = { userId: p.user.id, rights: rightsFingerprint(p.user), request: k.request };
  for (const row of rows) {
    const found = storedAnswerOf(row, k.command, b);
    if (found.kind === 'conflict') throw new CommandError('CONFLICT', 'this request key was used for another command or by another user');
    if (found.kind === 'answer' && !p.user.mustChangePassword) return { payload: found.payload };
  }
  return undefined;
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
export function installClusterGate(d: Dispatcher, nodeRef: () => ClusterNode | undefined, services: ClubServices, now: () => number = services.now ?? Date.now): void {
  const storage = services.storage;
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
    const k: KeyedRequest | undefined = rk !== undefined && !isSessionCommand(spec.name) ? { rk, command: spec.name, userId, rights: '', request: requestFingerprint(payload), now, kept: false } : undefined;
    if (k) {
      const stored = storedAnswer(services, club, ctx, k);
      if (stored !== undefined) return stored;
    }
    let result: CommandResult;
    try {
      // A writing handler stores its answer in the transaction of its change (daemon/edge/keyed-answer.ts).
      result = await runKeyed(k, () => spec.handler(payload, ctx));
    } catch (e) {
      // The club moved away while the command waited: its write was refused (cluster/capture.ts guardWrites).
      throw isNotServedWrite(e) ? wireError(node, club, e) : e;
    }
    try {
      // A keyed command that kept no answer in a transaction of its own changed nothing (a read):
      // nothing is stored, and its retry runs it again with every check of its handler.
      await node.commit(club);
      if (ROW_COMMANDS.has(spec.name)) await node.registerClub(club);
    } catch (e) {
      throw wireError(node, club, e);
    }
    return result;
  });
}
