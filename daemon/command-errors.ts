/**
 * Errors a command handler may raise. `code` travels to the client in an ERROR message; the
 * message is a short sentence meant for the user, never a stack trace or internal detail.
 */
export type WireErrorCode =
  | 'BAD_REQUEST'
  | 'UNKNOWN_COMMAND'
  | 'UNEXPECTED_STREAM'
  | 'STREAM_REQUIRED'
  | 'DUPLICATE_ID'
  | 'BUSY'
  | 'TOO_LARGE'
  | 'TIMEOUT'
  | 'CANCELLED'
  | 'SHUTTING_DOWN'
  | 'UNAUTHENTICATED'
  | 'FORBIDDEN'
  | 'NOT_FOUND'
  | 'CONFLICT'
  | 'INTERNAL';

export class CommandError extends Error {
  override readonly name = 'CommandError';
  constructor(
    readonly code: WireErrorCode,
    message: string,
  ) {
    super(message);
  }
}
