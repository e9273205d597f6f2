/**
 * Errors the SDK raises. Local failures have their own codes; an ERROR message from the server
 * becomes a RemoteError carrying the server's code unchanged.
 */
export type ClientErrorCode =
  | 'CONNECT_FAILED'
  | 'CONNECT_TIMEOUT'
  | 'SERVER_KEY_MISMATCH'
  | 'SERVER_KEY_CHANGED'
  | 'SERVER_KEY_ROTATED'
  | 'HANDSHAKE_FAILED'
  | 'SERVER_CREDENTIAL_TIME'
  | 'BANNED'
  | 'BUSY'
  | 'CONNECTION_CLOSED'
  | 'TIMEOUT'
  | 'REQUEST_TOO_LARGE'
  | 'PROTOCOL_ERROR';

export class ClientError extends Error {
  override readonly name = 'ClientError';
  constructor(
    readonly code: ClientErrorCode,
    message: string,
    /** BANNED: when the ban ends, ms since the epoch (as the server said). */
    readonly until?: number,
  ) {
    super(message);
  }
}

export class RemoteError extends Error {
  override readonly name = 'RemoteError';
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}
