/**
 * The plaintext refusal (docs/PROTOCOL.md section 3.4): what the server sends, instead of
 * waiting for a ClientHello, to a source it will not serve, before it closes the connection.
 * It costs no crypto and no state, and lets a member's client say why it cannot connect.
 *
 *   "CMSP-REFUSED" SP code [SP until] LF      (ASCII, at most MAX_REFUSAL_LEN bytes)
 *   code  = "BANNED" | "BUSY"
 *   until = the ban's end, ISO 8601 UTC with milliseconds (BANNED only)
 *
 * e.g. "CMSP-REFUSED BANNED 2026-11-30T07:00:00.000Z\n" (45 bytes). A server's first byte is
 * otherwise 0x02 (ServerHello) or 0x7f (Reject), so a client tells the two apart by the first
 * byte, 0x43 ("C"). The refusal is not authenticated (nothing is, before the handshake): a
 * client shows it as the server's statement and must not act on it beyond reporting it.
 */
export const REFUSAL_PREFIX = Buffer.from('CMSP-REFUSED ', 'ascii');
export const REFUSAL_FIRST_BYTE = 0x43;
export const MAX_REFUSAL_LEN = 64;

export type RefusalCode = 'BANNED' | 'BUSY';

export interface Refusal {
  readonly code: RefusalCode;
  /** For BANNED: the end of the ban, ms since the epoch. */
  readonly until?: number;
}

/** The refusal's bytes. */
export function encodeRefusal(r: Refusal): Buffer {
  const until = r.code === 'BANNED' && r.until !== undefined ? ` ${new Date(r.until).toISOString()}` : '';
  return Buffer.from(`CMSP-REFUSED ${r.code}${until}\n`, 'ascii');
}

/**
 * Reads a refusal from the first bytes a server sent. 'need-data' while a refusal may still be
 * arriving, undefined when the bytes are not a refusal (or a malformed one).
 */
export function decodeRefusal(b: Uint8Array): Refusal | 'need-data' | undefined {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  const n = Math.min(buf.length, REFUSAL_PREFIX.length);
  if (!buf.subarray(0, n).equals(REFUSAL_PREFIX.subarray(0, n))) return undefined;
  const lf = buf.indexOf(0x0a);
  if (lf < 0) return buf.length < MAX_REFUSAL_LEN ? 'need-data' : undefined;
  if (lf >= MAX_REFUSAL_LEN) return undefined;
  const m = /^CMSP-REFUSED (BANNED|BUSY)(?: (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z))?$/.exec(buf.subarray(0, lf).toString('latin1'));
  if (!m) return undefined;
  const code = m[1] as RefusalCode;
  if (m[2] === undefined) return code === 'BUSY' ? { code } : undefined;
  const until = Date.parse(m[2]);
  return code === 'BANNED' && Number.isFinite(until) ? { code, until } : undefined;
}
