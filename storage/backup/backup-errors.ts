/** Typed errors of backups: stable `code`, an operator-readable `message` (never key material). */
export type BackupErrorCode =
  | 'NOT_AN_ARCHIVE'
  | 'ARCHIVE_VERSION'
  | 'ARCHIVE_INVALID'
  | 'ARCHIVE_CORRUPT'
  | 'ARCHIVE_TRUNCATED'
  | 'WRONG_BACKUP_KEY'
  | 'WRONG_PASSPHRASE'
  | 'PASSPHRASE_NOT_SET'
  | 'PASSPHRASE_WEAK'
  | 'CLUB_MISMATCH'
  | 'DESTINATION_FAILED'
  | 'VERIFY_FAILED'
  | 'NOT_FOUND'
  | 'BUSY'
  /** Cluster: the club's backup is made (or restored in place) by its primary, another member (named in the message). */
  | 'NOT_PRIMARY'
  /** Cluster: an operation a replicated club does not support yet (in-place restore: restore into --target). */
  | 'UNSUPPORTED_IN_CLUSTER'
  | 'ORIGIN_UNVERIFIED'
  | 'BAD_TRUST_KEY'
  | 'SCHEMA_MISMATCH'
  | 'CONFIRMATION_REQUIRED'
  /** The snapshot worker thread stopped (crashed, ran out of memory) while taking a club's snapshot. */
  | 'SNAPSHOT_WORKER_FAILED';

const BRAND = Symbol.for('commusic.BackupError');

export class BackupError extends Error {
  readonly code: BackupErrorCode;
  constructor(code: BackupErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BackupError';
    this.code = code;
    (this as Record<symbol, unknown>)[BRAND] = true;
  }
  static override [Symbol.hasInstance](x: unknown): boolean {
    return typeof x === 'object' && x !== null && (x as Record<symbol, unknown>)[BRAND] === true;
  }
}
