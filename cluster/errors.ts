/**
 * Typed errors of the cluster layer (issue 14). `code` is stable and is what daemon/ maps to a wire
 * status; `message` is for the operator. Messages never carry keys, entry contents or personal data.
 */
export type ClusterErrorCode =
  /** etcd did not answer within the call's deadline or the retry budget (writes fail, nothing applied). */
  | 'ETCD_UNAVAILABLE'
  /** This server no longer holds the club: its owner key is gone or belongs to another server. */
  | 'FENCED'
  /** The club is owned by another server (the error names it). */
  | 'NOT_OWNER'
  /** This server's lease has run out by its own clock: it must stop serving. */
  | 'LEASE_EXPIRED'
  /** An entry or batch exceeds the per-entry bound (etcd's request limit is 1.5 MiB). */
  | 'ENTRY_TOO_LARGE'
  /** A log entry failed authentication, is out of sequence, or is malformed. */
  | 'LOG_CORRUPT'
  /** The log is closed (ownership released or the client shut down). */
  | 'CLOSED'
  /** A record the call needs is not in etcd (a club deleted meanwhile). */
  | 'NOT_FOUND'
  /** Invalid argument (a club id, node id or address that fails validation). */
  | 'INVALID_ARGUMENT'
  /** A club snapshot failed verification (hash, size, key, position, change-log head): not installed. */
  | 'SNAPSHOT_INVALID'
  /** No member could give a usable snapshot of the club now (none has one, or the transfer failed). */
  | 'SNAPSHOT_UNAVAILABLE'
  /** Peer channel: the member could not be reached, or did not answer within the call's deadline. */
  | 'PEER_UNAVAILABLE'
  /** Peer channel: authentication failed either way, or the member refused the request. */
  | 'PEER_REFUSED'
  /** Peer channel: an object's bytes do not match its announced size or SHA-256, or exceed the bound. */
  | 'PEER_OBJECT_BAD';

const BRAND = Symbol.for('commusic.ClusterError');

export class ClusterError extends Error {
  readonly code: ClusterErrorCode;
  /** For NOT_OWNER and FENCED: the node id that holds the club now, when known. */
  readonly owner: string | undefined;
  constructor(code: ClusterErrorCode, message: string, options?: { cause?: unknown; owner?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ClusterError';
    this.code = code;
    this.owner = options?.owner;
    (this as Record<symbol, unknown>)[BRAND] = true;
  }
  static override [Symbol.hasInstance](x: unknown): boolean {
    return typeof x === 'object' && x !== null && (x as Record<symbol, unknown>)[BRAND] === true;
  }
}

/** Minimal logger shape so cluster/ never imports daemon/log.ts (winston's Logger fits). */
export interface ClusterLogger {
  warn(msg: string, meta?: Record<string, unknown>): void;
  info(msg: string, meta?: Record<string, unknown>): void;
}

export const silentClusterLogger: ClusterLogger = { warn() {}, info() {} };

/** An error's own message (ours: ids and numbers, no secrets) for the operator log's `reason`, bounded. */
export function reasonOf(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).slice(0, 200);
}
