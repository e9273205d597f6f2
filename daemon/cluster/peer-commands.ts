/**
 * The peer commands (PROTOCOL.md 6.6; docs/SECURITY.md "Server-to-server traffic"): the answering
 * side of the peer channel (cluster/peer-channel.ts), registered only when the daemon runs in a
 * cluster.
 *
 * - `peer.auth {node, to, proof}`: the caller proves it is member `node` (an HMAC under a key
 *   derived from the shared master key, bound to this session's exporter value); the answer is this
 *   member's proof. The caller must be a current member in etcd. Every failure is the same
 *   UNAUTHENTICATED answer and a `login` violation, like a failed login.
 * - `peer.pull {kind, club, name}`: the object as a download stream (NOT_FOUND when not here).
 * - `peer.push {kind, club, name, size, sha256, meta?}` + upload stream: `{stored: true}` once the
 *   bytes were verified and made durable.
 *
 * Deny by default, both ways: a session that passed `peer.auth` may use the peer commands and
 * nothing else (every other command answers FORBIDDEN; only the commands every connection has
 * before any login, registered by the edge after this gate: ping, server.info, server.schema); `peer.pull` and `peer.push` on any other
 * session, and `peer.auth` on a session with a club login, answer FORBIDDEN and count as a
 * `rights` violation.
 */
import { z } from 'zod';
import { ClusterError } from '../../cluster/errors.js';
import type { PeerChannel } from '../../cluster/peer-channel.js';
import { PEER_PROOF_LEN } from '../../cluster/peer-auth.js';
import { currentClub } from '../club/session.js';
import { CommandError } from '../edge/command-errors.js';
import type { CommandContext, CommandSpec, Dispatcher } from '../edge/dispatcher.js';
import type { ViolationSink } from '../bans/violations.js';

/** ctx.session key of a connection that passed peer.auth: the caller's node id. */
export const PEER_SESSION_KEY = 'peer';
export const PEER_COMMANDS = ['peer.auth', 'peer.pull', 'peer.push'] as const;
export const PEER_AUTH_FAILED = 'peer authentication failed';

const nodeField = z.string().min(1).max(64);
const objectFields = { kind: z.enum(['document', 'snapshot']), club: z.string().min(1).max(64), name: z.string().max(128) };
const metaField = z.record(z.string().max(64), z.union([z.string().max(256), z.number()])).optional();

function peerOf(ctx: CommandContext): string | undefined {
  const v = ctx.session.get(PEER_SESSION_KEY);
  return typeof v === 'string' ? v : undefined;
}

/** A ClusterError from the channel as the caller's error (codes only). */
function wireError(e: unknown): CommandError {
  if (e instanceof CommandError) return e;
  if (e instanceof ClusterError) {
    if (e.code === 'PEER_UNAVAILABLE') return new CommandError('BUSY', 'too many peer transfers; retry');
    if (e.code === 'PEER_OBJECT_BAD') return new CommandError('BAD_REQUEST', 'object refused: size or SHA-256 do not match, or over the limit');
    if (e.code === 'INVALID_ARGUMENT') return new CommandError('BAD_REQUEST', 'invalid peer object');
    if (e.code === 'PEER_REFUSED') return new CommandError('FORBIDDEN', 'not taken by this member');
  }
  return new CommandError('INTERNAL', 'internal error');
}

/**
 * Register the peer commands and the gate that keeps peer sessions and club sessions apart.
 * Call after every other command is registered (the gate wraps them all), before the cluster gate.
 */
export function registerPeerCommands(d: Dispatcher, channel: () => PeerChannel | undefined, violations: ViolationSink, now: () => number = Date.now): void {
  const refuse = (ctx: CommandContext, command: string, detail: string): never => {
    violations.report({ ip: ctx.conn.ip, kind: 'rights', detail, time: now(), command });
    throw new CommandError('FORBIDDEN', 'peer commands are for cluster members');
  };
  const needPeer = (ctx: CommandContext, command: string): PeerChannel => {
    if (peerOf(ctx) === undefined) refuse(ctx, command, 'peer command without peer authentication');
    const ch = channel();
    if (!ch) throw new CommandError('UNAVAILABLE', 'this server is joining the cluster; retry shortly');
    return ch;
  };

  // Every command outside the peer set refuses a peer session (deny by default).
  const peerSet = new Set<string>(PEER_COMMANDS);
  d.wrapAll((spec: CommandSpec) => {
    if (peerSet.has(spec.name)) return spec.handler;
    return (payload, ctx) => (peerOf(ctx) !== undefined ? Promise.reject(new CommandError('FORBIDDEN', 'a peer session may use peer commands only')) : spec.handler(payload, ctx));
  });

  d.register({
    name: 'peer.auth',
    schema: z.object({ node: nodeField, to: nodeField, proof: z.instanceof(Uint8Array) }).strict(),
    handler: async (p, ctx) => {
      if (currentClub(ctx) !== undefined) refuse(ctx, 'peer.auth', 'peer authentication on a club session');
      const ch = channel();
      if (!ch) throw new CommandError('UNAVAILABLE', 'this server is joining the cluster; retry shortly');
      if (peerOf(ctx) !== undefined) throw new CommandError('CONFLICT', 'this session is already authenticated');
      const binding = ctx.channelBinding?.();
      const answer = p.proof.length === PEER_PROOF_LEN && binding ? ch.authenticate(p.node, p.to, binding, p.proof) : undefined;
      if (!answer && p.proof.length === PEER_PROOF_LEN && binding && ch.provesKeyOnly(p.node, p.to, binding, p.proof)) {
        // The master key is proved, only the membership is missing (joining, or a lapsed lease):
        // the caller retries; no violation, or members would ban each other's addresses.
        throw new CommandError('UNAVAILABLE', 'not a current member of this cluster (yet); retry shortly');
      }
      if (!answer) {
        violations.report({ ip: ctx.conn.ip, kind: 'login', detail: 'failed peer authentication', time: now(), command: 'peer.auth' });
        throw new CommandError('UNAUTHENTICATED', PEER_AUTH_FAILED);
      }
      ctx.session.set(PEER_SESSION_KEY, p.node);
      ctx.authenticated?.();
      return { payload: { node: ch.nodeId, proof: answer } };
    },
  });

  d.register({
    name: 'peer.pull',
    schema: z.object(objectFields).strict(),
    handler: async (p, ctx) => {
      const ch = needPeer(ctx, 'peer.pull');
      let got;
      try {
        got = await ch.servePull(p);
      } catch (e) {
        throw wireError(e);
      }
      if (!got) throw new CommandError('NOT_FOUND', 'no such object here');
      return { payload: { size: got.size, sha256: got.sha256, ...(got.meta ? { meta: got.meta } : {}) }, download: got.chunks };
    },
  });

  d.register({
    name: 'peer.push',
    upload: true,
    schema: z.object({ ...objectFields, size: z.number().int().min(0), sha256: z.string().regex(/^[0-9a-f]{64}$/), meta: metaField }).strict(),
    handler: async (p, ctx) => {
      const ch = needPeer(ctx, 'peer.push');
      const { size, sha256, meta, ...obj } = p;
      try {
        await ch.servePush(obj, { size, sha256, meta }, ctx.upload!);
      } catch (e) {
        throw wireError(e);
      }
      return { payload: { stored: true } };
    },
  });
}
