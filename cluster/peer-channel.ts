/**
 * The peer channel (issue 14, "Security of the new paths"; docs/CLUSTER.md "Server-to-server
 * transfer"): PeerTransport over the project's own protocol, on the members' advertised
 * addresses (no second port, no new firewall rule).
 *
 * The calling member opens a CMSP session to the other member's advertised address, checks the
 * identity key's fingerprint against its own (every member holds the same identity key), proves
 * membership with `peer.auth` (cluster/peer-auth.ts: an HMAC under a key derived from the shared
 * master key, bound to this session's exporter value) and checks the answering member's proof in
 * return. Then one `peer.pull` (the object comes as a download stream) or `peer.push` (as an
 * upload stream) runs on that session, and the session is closed: one session per transfer, so a
 * deadline can end a transfer by closing its session without touching any other.
 *
 * Bounds: object size (maxObjectBytes), chunks (the protocol's 65024 bytes and flow control,
 * PROTOCOL.md 6.1: neither side buffers more than one window), transfers at once (maxOutgoing
 * here, maxIncoming for what other members send), and a deadline per call (by default
 * minDeadlineMs plus the size at minBytesPerSecond). Bytes are checked against the announced
 * size while they flow (one byte too many ends the transfer) and against the SHA-256 at the end;
 * a handler installs nothing before the stream has ended verified.
 *
 * The answering side is `servePull` / `servePush` / `authenticate`, called by the daemon's peer
 * commands (daemon/cluster/peer-commands.ts), which enforce who may call them.
 */
import { derivePeerAuthKey } from '../crypto/cluster-seal.js';
import { connect, type Connection } from '../client/connection.js';
import { RemoteError } from '../client/errors.js';
import { ClusterError, silentClusterLogger, type ClusterLogger } from './errors.js';
import { checkNodeId } from './keys.js';
import { checkPeerProof, peerProof } from './peer-auth.js';
import { checkPayloadFacts, checkPeerObject, verifiedChunks } from './peer-object.js';
import { Slots, slotHeldUntilDone } from './peer-slots.js';
import type { PeerKind, PeerObject, PeerPayload, PeerPullHandler, PeerPushHandler, PeerTransport } from './peer-types.js';

export interface PeerLimits {
  /** Largest object either way, in bytes (default 2 GiB: a 1 GiB document encrypted fits). */
  maxObjectBytes: number;
  /** Transfers this member runs at once as caller (default 4); more wait for a slot. */
  maxOutgoing: number;
  /** Transfers this member serves at once (default 8); more are answered BUSY. */
  maxIncoming: number;
  /** Connect, handshake and peer authentication (default 5000 ms). */
  connectTimeoutMs: number;
  /** The default deadline of a call is this (default 10 000 ms) ... */
  minDeadlineMs: number;
  /** ... plus the object's size at this rate (default 4 MiB/s). */
  minBytesPerSecond: number;
}

export const DEFAULT_PEER_LIMITS: PeerLimits = {
  maxObjectBytes: 2 * 1024 ** 3,
  maxOutgoing: 4,
  maxIncoming: 8,
  connectTimeoutMs: 5000,
  minDeadlineMs: 10_000,
  minBytesPerSecond: 4 * 1024 ** 2,
};

export interface PeerChannelOptions {
  nodeId: string;
  /** The shared master key's raw bytes (the peer key is derived from it). */
  masterKey: Uint8Array;
  /** The identity fingerprints a member may present (this server's current key, and during a rollover the other one). */
  fingerprints: () => readonly string[];
  /** A current member's advertised HOST:PORT, or undefined when `node` is not a member now. */
  resolve: (node: string) => string | undefined;
  /** Whether `node` is a current member (the answering side's check; etcd's member keys). */
  isMember: (node: string) => boolean;
  /** Local address outgoing sessions start from (tests use 127.0.0.x). */
  localAddress?: string;
  limits?: Partial<PeerLimits>;
  logger?: ClusterLogger;
}

function splitAddress(address: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):([0-9]{1,5})$/.exec(address);
  if (!m) throw new ClusterError('INVALID_ARGUMENT', 'invalid member address');
  return { host: (m[1] ?? m[2])!, port: Number(m[3]) };
}

/** A remote or local failure as a ClusterError (codes only, never the remote text in our own logic). */
function asClusterError(e: unknown, what: string): ClusterError {
  if (e instanceof ClusterError) return e;
  if (e instanceof RemoteError) {
    if (e.code === 'BUSY' || e.code === 'UNAVAILABLE' || e.code === 'SHUTTING_DOWN' || e.code === 'TIMEOUT') return new ClusterError('PEER_UNAVAILABLE', `${what}: the member answered ${e.code}`, { cause: e });
    if (e.code === 'TOO_LARGE' || e.code === 'BAD_REQUEST') return new ClusterError('PEER_OBJECT_BAD', `${what}: the member answered ${e.code}`, { cause: e });
    return new ClusterError('PEER_REFUSED', `${what}: the member answered ${e.code}`, { cause: e });
  }
  return new ClusterError('PEER_UNAVAILABLE', `${what}: ${(e as Error)?.message ?? 'failed'}`, { cause: e });
}

export class PeerChannel implements PeerTransport {
  readonly limits: PeerLimits;
  private readonly peerKey: Buffer;
  private readonly pullHandlers = new Map<PeerKind, PeerPullHandler>();
  private readonly pushHandlers = new Map<PeerKind, PeerPushHandler>();
  private readonly outgoing: Slots;
  private readonly incoming: Slots;
  private readonly logger: ClusterLogger;

  constructor(private readonly opts: PeerChannelOptions) {
    checkNodeId(opts.nodeId);
    this.limits = { ...DEFAULT_PEER_LIMITS, ...opts.limits };
    this.peerKey = derivePeerAuthKey(opts.masterKey);
    this.outgoing = new Slots(this.limits.maxOutgoing);
    this.incoming = new Slots(this.limits.maxIncoming);
    this.logger = opts.logger ?? silentClusterLogger;
  }

  get nodeId(): string {
    return this.opts.nodeId;
  }

  onPull(kind: PeerKind, handler: PeerPullHandler): void {
    this.pullHandlers.set(kind, handler);
  }

  onPush(kind: PeerKind, handler: PeerPushHandler): void {
    this.pushHandlers.set(kind, handler);
  }

  /** The default deadline of a transfer of `size` bytes, in ms. */
  deadlineFor(size: number): number {
    return this.limits.minDeadlineMs + Math.ceil((size / this.limits.minBytesPerSecond) * 1000);
  }

  async pull(node: string, obj: PeerObject, opts: { deadlineMs?: number } = {}): Promise<PeerPayload | undefined> {
    const o = checkPeerObject(obj);
    const start = Date.now();
    const firstDeadline = start + (opts.deadlineMs ?? this.limits.minDeadlineMs);
    const release = await this.outgoing.take(firstDeadline);
    let conn: Connection | undefined;
    let timer: NodeJS.Timeout | undefined;
    const end = (): void => {
      clearTimeout(timer);
      void conn?.close().catch(() => undefined);
      release();
    };
    const arm = (at: number): void => {
      clearTimeout(timer);
      timer = setTimeout(end, Math.max(0, at - Date.now()));
      timer.unref?.();
    };
    try {
      arm(firstDeadline);
      conn = await this.open(node, firstDeadline);
      const r = await conn.request('peer.pull', { kind: o.kind, club: o.club, name: o.name }, { timeoutMs: Math.max(1, firstDeadline - Date.now()) }).catch((e: unknown) => {
        if (e instanceof RemoteError && e.code === 'NOT_FOUND') return undefined;
        throw e;
      });
      if (!r) {
        end();
        return undefined;
      }
      const facts = checkPayloadFacts((r.payload ?? {}) as Record<string, unknown>, this.limits.maxObjectBytes);
      if (!r.download) throw new ClusterError('PEER_OBJECT_BAD', 'pull answered without a stream');
      // The whole transfer gets the deadline of its size (from the start of the call).
      arm(opts.deadlineMs !== undefined ? start + opts.deadlineMs : start + this.deadlineFor(facts.size));
      const download = r.download;
      async function* chunks(): AsyncGenerator<Uint8Array> {
        try {
          yield* verifiedChunks(download, facts.size, facts.sha256);
        } catch (e) {
          throw asClusterError(e, `pull ${o.kind} from ${node}`);
        } finally {
          end();
        }
      }
      return { size: facts.size, sha256: facts.sha256, ...(facts.meta ? { meta: facts.meta } : {}), chunks: chunks() };
    } catch (e) {
      end();
      throw asClusterError(e, `pull ${o.kind} from ${node}`);
    }
  }

  async push(node: string, obj: PeerObject, payload: PeerPayload, opts: { deadlineMs?: number } = {}): Promise<void> {
    const o = checkPeerObject(obj);
    const facts = checkPayloadFacts(payload, this.limits.maxObjectBytes);
    const deadline = Date.now() + (opts.deadlineMs ?? this.deadlineFor(facts.size));
    const release = await this.outgoing.take(deadline);
    let conn: Connection | undefined;
    const timer = setTimeout(() => void conn?.close().catch(() => undefined), Math.max(0, deadline - Date.now()));
    timer.unref?.();
    try {
      conn = await this.open(node, deadline);
      // What we send is checked as it goes too: a source that changed under us fails here first,
      // and ends the session at once (the request would otherwise wait for its deadline).
      let sourceError: unknown;
      const c = conn;
      async function* upload(): AsyncGenerator<Uint8Array> {
        try {
          yield* verifiedChunks(payload.chunks, facts.size, facts.sha256);
        } catch (e) {
          sourceError = e;
          void c.close().catch(() => undefined);
          throw e;
        }
      }
      const r = await conn.request('peer.push', { kind: o.kind, club: o.club, name: o.name, size: facts.size, sha256: facts.sha256, ...(facts.meta ? { meta: facts.meta } : {}) }, { upload: upload(), timeoutMs: Math.max(1, deadline - Date.now()) }).catch((e: unknown) => {
        throw sourceError ?? e;
      });
      if ((r.payload as { stored?: unknown } | null)?.stored !== true) throw new ClusterError('PEER_REFUSED', `push ${o.kind} to ${node}: no receipt`);
    } catch (e) {
      throw asClusterError(e, `push ${o.kind} to ${node}`);
    } finally {
      clearTimeout(timer);
      void conn?.close().catch(() => undefined);
      release();
    }
  }

  /** Opens a session to `node` and runs the mutual membership proof. @throws ClusterError */
  private async open(node: string, deadline: number): Promise<Connection> {
    checkNodeId(node);
    if (node === this.opts.nodeId) throw new ClusterError('INVALID_ARGUMENT', 'a member does not transfer to itself');
    const address = this.opts.resolve(node);
    if (!address) throw new ClusterError('PEER_UNAVAILABLE', `${node} is not a current member`);
    const { host, port } = splitAddress(address);
    const timeout = Math.max(1, Math.min(this.limits.connectTimeoutMs, deadline - Date.now()));
    const conn = await connect({ host, port, fingerprints: [...this.opts.fingerprints()], connectTimeoutMs: timeout, requestTimeoutMs: timeout, ...(this.opts.localAddress ? { localAddress: this.opts.localAddress } : {}) });
    try {
      const binding = conn.channelBinding;
      if (!binding) throw new ClusterError('PEER_REFUSED', 'session has no exporter value');
      const proof = peerProof(this.peerKey, 'client', this.opts.nodeId, node, binding);
      const r = await conn.request('peer.auth', { node: this.opts.nodeId, to: node, proof }, { timeoutMs: timeout });
      const p = (r.payload ?? {}) as { node?: unknown; proof?: unknown };
      if (p.node !== node || !checkPeerProof(this.peerKey, 'server', node, this.opts.nodeId, binding, p.proof)) {
        this.logger.warn('peer did not prove membership', { event: 'cluster.peer.auth-failed', node });
        throw new ClusterError('PEER_REFUSED', `${node} did not prove membership`);
      }
      binding.fill(0);
      return conn;
    } catch (e) {
      void conn.close().catch(() => undefined);
      throw e;
    }
  }

  // ---- the answering side (the daemon's peer commands) ------------------------------------

  /**
   * Checks a caller's membership proof; returns this member's proof in return, or undefined
   * (the caller is not a current member, names another member as `to`, or the proof is wrong).
   */
  authenticate(from: string, to: string, exporter: Uint8Array | undefined, proof: unknown): Buffer | undefined {
    if (to !== this.opts.nodeId || from === this.opts.nodeId) return undefined;
    try {
      checkNodeId(from);
    } catch {
      return undefined;
    }
    if (!checkPeerProof(this.peerKey, 'client', from, to, exporter, proof)) return undefined;
    if (!this.opts.isMember(from)) return undefined;
    return peerProof(this.peerKey, 'server', this.opts.nodeId, from, exporter!);
  }

  /**
   * Whether a refused caller's proof itself was right (it holds the master key and named this
   * member) and only its membership is missing: a member that is joining or whose lease just
   * lapsed. Such a refusal is no attack and must not count towards a ban of a member's address.
   */
  provesKeyOnly(from: string, to: string, exporter: Uint8Array | undefined, proof: unknown): boolean {
    if (to !== this.opts.nodeId || from === this.opts.nodeId) return false;
    try {
      checkNodeId(from);
    } catch {
      return false;
    }
    return checkPeerProof(this.peerKey, 'client', from, to, exporter, proof) && !this.opts.isMember(from);
  }

  /**
   * Serves a pull: the object's facts and a stream, or undefined (not here). The stream holds an
   * incoming slot until it ends. @throws ClusterError PEER_UNAVAILABLE (BUSY), INVALID_ARGUMENT
   */
  async servePull(obj: unknown): Promise<PeerPayload | undefined> {
    const o = checkPeerObject((obj ?? {}) as Record<string, unknown>);
    const handler = this.pullHandlers.get(o.kind);
    if (!handler) return undefined;
    const slot = this.incoming.tryTake();
    if (!slot) throw new ClusterError('PEER_UNAVAILABLE', 'too many peer transfers');
    const release: () => void = slot;
    try {
      const p = await handler(o);
      if (!p) {
        release();
        return undefined;
      }
      const facts = checkPayloadFacts(p, this.limits.maxObjectBytes);
      return { ...facts, chunks: slotHeldUntilDone(verifiedChunks(p.chunks, facts.size, facts.sha256), p.chunks, release) };
    } catch (e) {
      release();
      throw e;
    }
  }

  /**
   * Takes a push: the handler gets the bytes checked against `facts` while they flow, and the
   * push counts as stored only when the handler resolved after the whole stream checked out.
   * @throws ClusterError PEER_UNAVAILABLE (BUSY), PEER_OBJECT_BAD, PEER_REFUSED (no handler), INVALID_ARGUMENT
   */
  async servePush(obj: unknown, facts: unknown, upload: AsyncIterable<Uint8Array>): Promise<void> {
    const o = checkPeerObject((obj ?? {}) as Record<string, unknown>);
    const f = checkPayloadFacts((facts ?? {}) as Record<string, unknown>, this.limits.maxObjectBytes);
    const handler = this.pushHandlers.get(o.kind);
    if (!handler) throw new ClusterError('PEER_REFUSED', `no ${o.kind} taken here`);
    const release = this.incoming.tryTake();
    if (!release) throw new ClusterError('PEER_UNAVAILABLE', 'too many peer transfers');
    let verified = false;
    try {
      await handler(o, { ...f, chunks: verifiedChunks(upload, f.size, f.sha256, () => (verified = true)) });
      if (!verified) throw new ClusterError('PEER_OBJECT_BAD', `${o.kind} handler returned before the stream was verified`);
    } finally {
      release();
    }
  }
}
