/**
 * One error type for everything the protocol layer refuses. `code` is stable and is what
 * gets logged and, where the peer should learn it, sent; `message` is for developers.
 */
export type ProtocolErrorCode =
  // Not our client at all (first bytes).
  | 'NOT_CLIENT_HTTP'
  | 'NOT_CLIENT_TLS'
  | 'NOT_CLIENT_SSH'
  | 'NOT_CLIENT_GARBAGE'
  // Handshake.
  | 'BAD_HANDSHAKE_MESSAGE'
  | 'VERSION_UNSUPPORTED'
  | 'BAD_KEY_SHARE'
  | 'BAD_SIGNATURE'
  | 'BAD_CREDENTIAL'
  | 'CREDENTIAL_EXPIRED'
  | 'CREDENTIAL_NOT_YET_VALID'
  | 'SERVER_KEY_MISMATCH'
  | 'BAD_FINISHED'
  | 'HANDSHAKE_REJECTED'
  | 'UNEXPECTED_RECORD'
  // Record layer.
  | 'RECORD_TOO_LARGE'
  | 'RECORD_TOO_SHORT'
  | 'BAD_RECORD_TYPE'
  | 'BAD_RECORD_MAC'
  | 'REKEY_REQUIRED'
  | 'TRUNCATED'
  | 'DATA_AFTER_CLOSE'
  // Message layer.
  | 'BAD_MESSAGE'
  | 'FLOW_CONTROL'
  | 'UNKNOWN_STREAM'
  | 'NOT_CONNECTED';

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  constructor(
    readonly code: ProtocolErrorCode,
    message: string = code,
  ) {
    super(message);
  }

  /** Which violation kind this error is, for the ban engine (undefined: not the peer's fault). */
  get violationKind(): 'http' | 'tls' | 'ssh' | 'garbage' | 'handshake' | 'protocol' {
    switch (this.code) {
      case 'NOT_CLIENT_HTTP':
        return 'http';
      case 'NOT_CLIENT_TLS':
        return 'tls';
      case 'NOT_CLIENT_SSH':
        return 'ssh';
      case 'NOT_CLIENT_GARBAGE':
        return 'garbage';
      case 'BAD_HANDSHAKE_MESSAGE':
      case 'VERSION_UNSUPPORTED':
      case 'BAD_KEY_SHARE':
      case 'BAD_SIGNATURE':
      case 'BAD_CREDENTIAL':
      case 'CREDENTIAL_EXPIRED':
      case 'CREDENTIAL_NOT_YET_VALID':
      case 'SERVER_KEY_MISMATCH':
      case 'BAD_FINISHED':
      case 'HANDSHAKE_REJECTED':
      case 'UNEXPECTED_RECORD':
        return 'handshake';
      default:
        return 'protocol';
    }
  }
}

/**
 * A failure that is not a ProtocolError (a bug, or a crypto library refusing input) still
 * ends the session the same opaque way; the original is kept as `cause` for the operator log.
 */
export function internalError(cause: unknown): ProtocolError {
  const e = new ProtocolError('BAD_MESSAGE', 'internal failure while processing peer input');
  (e as { cause?: unknown }).cause = cause;
  return e;
}
