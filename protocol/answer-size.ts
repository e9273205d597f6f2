import { MAX_MESSAGE_LEN_V2, MAX_RECORD_PLAINTEXT, MAX_REQUEST_ID } from './constants.js';

/**
 * The byte bound of one answer, and how many items of a list fit in it (PROTOCOL.md 7, "Pages
 * are cut by bytes"). Pure: no I/O, no clock.
 *
 * A RESPONSE is `[1, id, payload]` in one message; a message is at most MAX_MESSAGE_LEN_V2 bytes
 * in version 2 (its length prefix shares the record) and MAX_RECORD_PLAINTEXT in version 1. A list
 * answer that would pass the bound returns fewer items and a continuation (cursor or
 * `nextAfterSeq`), never TOO_LARGE.
 */

/** CBOR head of an unsigned argument: 1, 2, 3, 5 or 9 bytes (RFC 8949 section 3). */
export function cborHeadSize(v: number): number {
  return v < 24 ? 1 : v < 0x100 ? 2 : v < 0x10000 ? 3 : v < 0x100000000 ? 5 : 9;
}

/** Bytes of the RESPONSE envelope around a payload: array(3), kind 1, the largest request id. */
export const RESPONSE_ENVELOPE_MAX = 1 + 1 + cborHeadSize(MAX_REQUEST_ID);

/** The largest encoded payload a RESPONSE may carry in either protocol version (bytes). */
export const MAX_ANSWER_PAYLOAD = Math.min(MAX_MESSAGE_LEN_V2, MAX_RECORD_PLAINTEXT) - RESPONSE_ENVELOPE_MAX;

function utf8Length(s: string): number {
  // Buffer.byteLength counts a lone surrogate as 3 bytes too (it is written as U+FFFD).
  if (s.length > 16) return Buffer.byteLength(s, 'utf8');
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3; // BMP, or a lone surrogate (written as U+FFFD, 3 bytes)
  }
  return n;
}

/**
 * The size in bytes of `v` as the message encoder writes it (minimal lengths; map entries whose
 * value is undefined left out, undefined array elements as null). Floats count 9 bytes (the
 * encoder may use fewer), so the result is exact or a little high, never low.
 * Throws TypeError for values a payload never holds (functions, symbols, bigints, class instances
 * other than Uint8Array).
 */
export function cborSize(v: unknown, depth = 0): number {
  if (depth > 64) throw new TypeError('value nested too deeply for a payload');
  switch (typeof v) {
    case 'number':
      if (Number.isSafeInteger(v) && !Object.is(v, -0)) return cborHeadSize(v >= 0 ? v : -1 - v);
      return 9;
    case 'string': {
      const n = utf8Length(v);
      return cborHeadSize(n) + n;
    }
    case 'boolean':
    case 'undefined':
      return 1;
    case 'object': {
      if (v === null) return 1;
      if (v instanceof Uint8Array) return cborHeadSize(v.length) + v.length;
      if (Array.isArray(v)) {
        let n = cborHeadSize(v.length);
        for (const x of v) n += cborSize(x, depth + 1);
        return n;
      }
      if (Object.getPrototypeOf(v) !== Object.prototype && Object.getPrototypeOf(v) !== null) break;
      let n = 0;
      let count = 0;
      const o = v as Record<string, unknown>;
      for (const k in o) {
        if (!Object.hasOwn(o, k)) continue;
        const x = o[k];
        if (x === undefined) continue;
        count++;
        n += cborSize(k, depth + 1) + cborSize(x, depth + 1);
      }
      return cborHeadSize(count) + n;
    }
    default:
      break;
  }
  throw new TypeError(`a payload cannot hold a ${typeof v}`);
}

/**
 * How many leading `items` fit in `budget` bytes as the elements of one CBOR array (its head
 * included). Returns the count and the bytes that many take. Each item is measured once.
 */
export function fitItems(items: readonly unknown[], budget: number): { count: number; bytes: number } {
  let bytes = 0;
  let count = 0;
  for (const it of items) {
    const s = cborSize(it);
    if (cborHeadSize(count + 1) + bytes + s > budget) break;
    bytes += s;
    count++;
  }
  return { count, bytes: cborHeadSize(count) + bytes };
}

/**
 * The part of a list answer that fits one RESPONSE. `fixed` is the answer without its list (the
 * list's key mapped to an empty array; every continuation field at its largest possible value,
 * so the answer can only shrink when they are filled in). Returns how many leading items fit;
 * at least one whenever `items` is non-empty and a single item fits at all (otherwise 0: the
 * caller answers TOO_LARGE, as for a single record over the bound).
 */
export function fitList(items: readonly unknown[], fixed: Record<string, unknown>, max = MAX_ANSWER_PAYLOAD): number {
  const budget = max - cborSize(fixed) + 1; // + 1: the empty array's head is counted in `fixed`
  if (budget <= 0) return 0;
  return fitItems(items, budget).count;
}
