/**
 * Server-to-server transfer (issue 14): the contract between the peer channel that carries bytes
 * between members (authenticated and encrypted, cluster/peer-*.ts) and what it carries: documents
 * pushed by a club's primary to its standbys before the log entry that references them, and
 * snapshots a new standby pulls instead of replaying a club's whole log.
 *
 * Objects travel as stored at rest (document files and store images are already encrypted under
 * the club's data key); the channel adds its own authentication and encryption on top.
 */

/** What the peer channel carries. */
export type PeerKind = 'document' | 'snapshot';

/**
 * Names one object: `club` a club id; `name` a kind-specific id (a document id; '' for the
 * current snapshot of a club). `sha256` (lower-case hex of the bytes as sent) and `size` (bytes)
 * are given by the sender of the bytes and checked by the receiver.
 */
export interface PeerObject {
  kind: PeerKind;
  club: string;
  name: string;
}

/** An object's bytes with the facts the receiver checks them against. */
export interface PeerPayload {
  size: number;
  sha256: string;
  /** Extra facts of the kind (a snapshot's log position, for instance); small, JSON-safe. */
  meta?: Record<string, string | number>;
  chunks: AsyncIterable<Uint8Array>;
}

/** Serves a pull: the object's bytes, or undefined when this member does not have it. */
export type PeerPullHandler = (obj: PeerObject) => Promise<PeerPayload | undefined>;

/** Takes a push: resolves once the bytes are verified against `sha256`/`size` and durable (fsync). */
export type PeerPushHandler = (obj: PeerObject, payload: PeerPayload) => Promise<void>;

/**
 * A member's end of the peer channel. Peers are named by node id (the member key in etcd gives
 * the address). Every call has a deadline; errors are ClusterError values with codes.
 */
export interface PeerTransport {
  /** Fetches an object from member `node`; undefined when it does not have it. Bytes are verified. */
  pull(node: string, obj: PeerObject, opts?: { deadlineMs?: number }): Promise<PeerPayload | undefined>;
  /** Sends an object to member `node`; resolves when that member holds it durably. */
  push(node: string, obj: PeerObject, payload: PeerPayload, opts?: { deadlineMs?: number }): Promise<void>;
  /** What this member serves and accepts, per kind (one handler each; a later call replaces). */
  onPull(kind: PeerKind, handler: PeerPullHandler): void;
  onPush(kind: PeerKind, handler: PeerPushHandler): void;
}
