/**
 * Typed errors of the crypto layer. `code` is stable (logs, tests, CLI exit paths); `message`
 * is for the operator and says what is wrong and how to fix it. Messages never contain key
 * material or plaintext.
 */
export type CryptoErrorCode =
  | 'KEY_FILE_MISSING'
  | 'KEY_FILE_UNSAFE'
  | 'KEY_FILE_INVALID'
  | 'KEY_FILE_EXISTS'
  | 'PASSPHRASE_REQUIRED'
  | 'WRONG_PASSPHRASE'
  | 'WRONG_KEY'
  | 'UNWRAP_FAILED'
  | 'BAD_KEY_LENGTH'
  | 'STREAM_CORRUPT'
  | 'STREAM_TRUNCATED'
  | 'STREAM_HEADER_INVALID'
  | 'PASSWORD_HASH_INVALID'
  | 'HASH_BUSY'
  | 'HASH_CANCELLED';

const BRAND = Symbol.for('commusic.CryptoError');

export class CryptoError extends Error {
  readonly code: CryptoErrorCode;
  constructor(code: CryptoErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CryptoError';
    this.code = code;
    (this as Record<symbol, unknown>)[BRAND] = true;
  }
  static override [Symbol.hasInstance](x: unknown): boolean {
    return typeof x === 'object' && x !== null && (x as Record<symbol, unknown>)[BRAND] === true;
  }
}
