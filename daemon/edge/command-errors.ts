/**
 * Errors a command handler may raise. `code` travels to the client in an ERROR message; the
 * message is a short sentence meant for the user, never a stack trace or internal detail.
 */
export const WIRE_ERROR_CODES = [
  'BAD_REQUEST',
  'UNKNOWN_COMMAND',
  'UNEXPECTED_STREAM',
  'STREAM_REQUIRED',
  'DUPLICATE_ID',
  'BUSY',
  'TOO_LARGE',
  'TIMEOUT',
  'CANCELLED',
  'SHUTTING_DOWN',
  'UNAUTHENTICATED',
  'FORBIDDEN',
  'NOT_FOUND',
  'CONFLICT',
  /** Several servers (PROTOCOL.md 6.5): the club is served by the server whose HOST:PORT starts the message. */
  'MOVED',
  /** Several servers: no server serves the club right now (takeover under way); retry shortly. */
  'UNAVAILABLE',
  'INTERNAL',
] as const;

/** Every code an ERROR message of this server carries (PROTOCOL.md 6.2 lists each). */
export type WireErrorCode = (typeof WIRE_ERROR_CODES)[number];

export class CommandError extends Error {
  override readonly name = 'CommandError';
  constructor(
    readonly code: WireErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** Longest ERROR message text the server sends (the wire allows 512; PROTOCOL.md 6.2). */
export const MAX_WIRE_ERROR_TEXT = 256;

/**
 * `s` made safe to send and to show: control characters (C0, DEL, C1, and the bidi overrides a
 * display could be tricked with) become "?", and the text is cut to `max` characters with an
 * ellipsis. Every ERROR message passes through it, whatever built the text.
 */
export function boundedText(s: string, max = MAX_WIRE_ERROR_TEXT): string {
  const clean = s.replace(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, '?');
  if (clean.length <= max) return clean;
  // Never cut a surrogate pair in half: the result must stay valid UTF-8 on the wire.
  let cut = max - 1;
  const c = clean.charCodeAt(cut - 1);
  if (c >= 0xd800 && c <= 0xdbff) cut--;
  return `${clean.slice(0, cut)}…`;
}
