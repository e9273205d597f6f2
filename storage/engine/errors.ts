/**
 * Typed errors of the storage layer. `code` is stable; `message` is for the operator and says
 * what is wrong and how to fix it. Messages never contain personal data or key material.
 */
export type StorageErrorCode =
  | 'STORE_NOT_FOUND'
  | 'STORE_BUSY'
  | 'STORE_CORRUPT'
  | 'CLUB_NOT_FOUND'
  | 'CLUB_SUSPENDED'
  | 'CLUB_DELETED'
  | 'CLUB_EXISTS'
  | 'WRONG_MASTER_KEY'
  | 'WRONG_DATA_KEY'
  | 'KEY_FILE_UNSAFE'
  | 'DOC_NOT_FOUND'
  | 'DOC_CORRUPT'
  | 'DOC_TOO_LARGE'
  | 'VALIDATION_FAILED'
  | 'SCHEMA_TOO_NEW'
  | 'ROTATION_IN_PROGRESS'
  | 'INVALID_ARGUMENT';

const BRAND = Symbol.for('commusic.StorageError');

export class StorageError extends Error {
  readonly code: StorageErrorCode;
  constructor(code: StorageErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StorageError';
    this.code = code;
    (this as Record<symbol, unknown>)[BRAND] = true;
  }
  static override [Symbol.hasInstance](x: unknown): boolean {
    return typeof x === 'object' && x !== null && (x as Record<symbol, unknown>)[BRAND] === true;
  }
}

/** Minimal logger shape so storage never imports daemon/common/log.ts (winston's Logger fits). */
export interface StorageLogger {
  warn(msg: string, meta?: Record<string, unknown>): void;
  info(msg: string, meta?: Record<string, unknown>): void;
}

export const silentLogger: StorageLogger = { warn() {}, info() {} };

/**
 * Whether `e` is a write its connection refused because writes are held off (PRAGMA query_only,
 * set on server.db while a master key rotation copies it on a worker: storage/server/
 * key-rotation.ts). Nothing was written; the caller answers BUSY and the client retries.
 */
export function isHeldWrite(e: unknown): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === 'SQLITE_READONLY';
}
