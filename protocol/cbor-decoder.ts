/**
 * The fast CBOR decoder of the message layer (protocol/messages.ts), run after checkCborShape:
 * the subset cborg plus toPlain would turn into the same value, with interned map keys and
 * command names, small byte strings copied into shared slabs. Pure: no I/O.
 */
import { MAX_COMMAND_LEN, MAX_REQUEST_ID, MSG_REQUEST } from './constants.js';

/** A REQUEST as the fast path decodes it (the request variant of messages.ts Message). */
export interface FastRequest {
  kind: 'request';
  id: number;
  command: string;
  payload: unknown;
  stream: boolean;
}

// ---------------------------------------------------------------------------------------------
// A direct decoder for the same subset, run after checkCborShape has vetted the structure. It
// builds plain objects at once. It accepts only what it is certain cborg (strict, no duplicate
// keys) plus toPlain would turn into the same value: minimal integer and length encodings,
// safe integers, ASCII text, byte strings (copied, as cborg copies them), arrays, maps with
// distinct ASCII text keys other than "__proto__", booleans and null. Anything else, including
// every malformed input, goes to cborg, so errors are reported exactly as before.

/** What the fast decoder returns where cborg must decode instead. */
export const GIVE_UP = Symbol('give-up');
const TWO_32 = 4294967296;
let dpos = 0;
/**
 * Byte strings at least this long are returned as views (owned input only), and only when they
 * take at least half of the buffer under them (VIEW_SHARE): a view pins the whole socket read it
 * lies in, and flow control counts only the value's own length, so a small chunk sharing a 64 KiB
 * read with discarded input would hold 16x what the window allows. Below that share it is copied.
 */
const VIEW_MIN = 4096;
const VIEW_SHARE = 2;
let viewFrom = Infinity;
/** How many views of an input buffer the decoder has returned so far (madeViews()). */
let viewsMade = 0;

/**
 * How many byte strings the decoder has returned as views of its input so far (a running
 * count): a session compares it before and after decoding a record to learn whether anything
 * it hands out still points into the record's buffer (protocol/read-buffers.ts).
 */
export function madeViews(): number {
  return viewsMade;
}

function readArg(b: Uint8Array, ai: number): number {
  if (ai < 24) return ai;
  if (ai === 24) {
    const v = b[dpos++]!;
    return v < 24 ? -1 : v;
  }
  if (ai === 25) {
    const v = (b[dpos]! << 8) | b[dpos + 1]!;
    dpos += 2;
    return v < 0x100 ? -1 : v;
  }
  if (ai === 26) {
    const v = ((b[dpos]! << 24) | (b[dpos + 1]! << 16) | (b[dpos + 2]! << 8) | b[dpos + 3]!) >>> 0;
    dpos += 4;
    return v < 0x10000 ? -1 : v;
  }
  // ai === 27 (checkCborShape refused everything else)
  const hi = ((b[dpos]! << 24) | (b[dpos + 1]! << 16) | (b[dpos + 2]! << 8) | b[dpos + 3]!) >>> 0;
  const lo = ((b[dpos + 4]! << 24) | (b[dpos + 5]! << 16) | (b[dpos + 6]! << 8) | b[dpos + 7]!) >>> 0;
  dpos += 8;
  if (hi === 0 || hi > 0x1fffff) return -1; // non-minimal, or beyond 2^53 - 1
  const v = hi * TWO_32 + lo;
  return Number.isSafeInteger(v) ? v : -1;
}

/**
 * Map keys and command names seen before, reused instead of built again character by character
 * (a string per key per message was a good part of the garbage on pipelined requests). A fixed
 * table of INTERN_SLOTS strings of at most INTERN_MAX_LEN characters, indexed by a hash of the
 * bytes and checked byte for byte; a miss builds the string and takes the slot. Text values are
 * never kept here (they may be passwords or personal data).
 */
const INTERN_SLOTS = 256;
const INTERN_MAX_LEN = 24;
const interned: (string | undefined)[] = new Array<string | undefined>(INTERN_SLOTS).fill(undefined);

function internedText(b: Uint8Array, len: number): string | typeof GIVE_UP {
  if (len > INTERN_MAX_LEN) return asciiText(b, len);
  const end = dpos + len;
  let h = len;
  for (let i = dpos; i < end; i++) {
    const c = b[i]!;
    if (c > 0x7f) return GIVE_UP;
    h = (Math.imul(h, 31) + c) | 0;
  }
  const slot = h & (INTERN_SLOTS - 1);
  const known = interned[slot];
  if (known !== undefined && known.length === len) {
    let i = 0;
    while (i < len && known.charCodeAt(i) === b[dpos + i]) i++;
    if (i === len) {
      dpos = end;
      return known;
    }
  }
  let s = '';
  for (let i = dpos; i < end; i++) s += String.fromCharCode(b[i]!);
  interned[slot] = s;
  dpos = end;
  return s;
}

/**
 * Small byte strings are copied into shared slabs of SLAB_LEN bytes (a view each, as Node's
 * Buffer pool does for small buffers) instead of an ArrayBuffer of their own each: one object
 * per value instead of three. A slab lives as long as any value copied into it (at most SLAB_LEN
 * bytes pinned by a small value); larger values get their own buffer.
 */
const SLAB_LEN = 8192;
const SLAB_COPY_MAX = 512;
let slab = new ArrayBuffer(SLAB_LEN);
let slabAt = 0;

function copyBytes(b: Uint8Array, from: number, n: number): Uint8Array {
  if (n > SLAB_COPY_MAX) {
    const own = new Uint8Array(n);
    own.set(b.subarray(from, from + n));
    return own;
  }
  if (slabAt + n > SLAB_LEN) {
    slab = new ArrayBuffer(SLAB_LEN);
    slabAt = 0;
  }
  const out = new Uint8Array(slab, slabAt, n);
  for (let i = 0; i < n; i++) out[i] = b[from + i]!;
  // 8-byte aligned, as Node's pool does.
  slabAt = (slabAt + n + 7) & ~7;
  return out;
}

function asciiText(b: Uint8Array, len: number): string | typeof GIVE_UP {
  const end = dpos + len;
  for (let i = dpos; i < end; i++) if (b[i]! > 0x7f) return GIVE_UP;
  let s = '';
  if (len <= 32) for (let i = dpos; i < end; i++) s += String.fromCharCode(b[i]!);
  else s = Buffer.from(b.buffer, b.byteOffset + dpos, len).toString('latin1');
  dpos = end;
  return s;
}

function fastItem(b: Uint8Array): unknown {
  const ib = b[dpos++]!;
  const major = ib >> 5;
  const ai = ib & 31;
  if (major === 7) {
    if (ai === 20) return false;
    if (ai === 21) return true;
    if (ai === 22) return null;
    return GIVE_UP;
  }
  const arg = readArg(b, ai);
  if (arg < 0) return GIVE_UP;
  switch (major) {
    case 0:
      return arg;
    case 1:
      return arg === Number.MAX_SAFE_INTEGER ? GIVE_UP : -1 - arg;
    case 2: {
      if (arg >= viewFrom && arg * VIEW_SHARE >= b.buffer.byteLength) {
        const view = new Uint8Array(b.buffer, b.byteOffset + dpos, arg);
        dpos += arg;
        viewsMade++;
        return view;
      }
      // A copy, so a small value never pins its record (or the socket read it was opened in).
      const out = copyBytes(b, dpos, arg);
      dpos += arg;
      return out;
    }
    case 3:
      return asciiText(b, arg);
    case 4: {
      const a: unknown[] = new Array(arg);
      for (let i = 0; i < arg; i++) {
        const v = fastItem(b);
        if (v === GIVE_UP) return GIVE_UP;
        a[i] = v;
      }
      return a;
    }
    case 5: {
      const o: Record<string, unknown> = {};
      for (let i = 0; i < arg; i++) {
        const kb = b[dpos++]!;
        if (kb >> 5 !== 3) return GIVE_UP;
        const klen = readArg(b, kb & 31);
        if (klen < 0) return GIVE_UP;
        const k = internedText(b, klen);
        if (k === GIVE_UP || k === '__proto__' || Object.prototype.hasOwnProperty.call(o, k)) return GIVE_UP;
        const v = fastItem(b);
        if (v === GIVE_UP) return GIVE_UP;
        o[k] = v;
      }
      return o;
    }
    default:
      return GIVE_UP;
  }
}

/**
 * A REQUEST ([0, id, command, payload] or [0, id, command, payload, true]) decoded without the
 * envelope array, its command name interned. Undefined when the bytes are anything else or
 * outside the fast decoder's subset: the general path then decodes them (and reports errors).
 * Checks exactly what decodeEnvelope checks for a request.
 */
export function fastRequest(b: Uint8Array, start: number, end: number, owned: boolean): FastRequest | undefined {
  viewFrom = owned ? VIEW_MIN : Infinity;
  const n = b[start];
  if ((n !== 0x84 && n !== 0x85) || b[start + 1] !== MSG_REQUEST) return undefined;
  dpos = start + 2;
  const ib = b[dpos++]!;
  if (ib >> 5 !== 0) return undefined;
  const reqId = readArg(b, ib & 31);
  if (reqId < 0 || reqId > MAX_REQUEST_ID) return undefined;
  const cb = b[dpos++]!;
  if (cb >> 5 !== 3) return undefined;
  const clen = readArg(b, cb & 31);
  if (clen < 1 || clen > MAX_COMMAND_LEN) return undefined;
  const command = internedText(b, clen);
  if (command === GIVE_UP) return undefined;
  const payload = fastItem(b);
  if (payload === GIVE_UP) return undefined;
  let stream = false;
  if (n === 0x85) {
    if (b[dpos++] !== 0xf5) return undefined;
    stream = true;
  }
  if (dpos !== end) return undefined;
  return { kind: 'request', id: reqId, command, payload, stream };
}

/**
 * The CBOR item in b[start, end) in the fast subset, or GIVE_UP (anything else, or bytes left
 * after the item). `owned` as in decodeMessage: large byte strings may be views of `b`.
 */
export function fastDecode(b: Uint8Array, start: number, end: number, owned: boolean): unknown {
  viewFrom = owned ? VIEW_MIN : Infinity;
  dpos = start;
  const v = fastItem(b);
  return v !== GIVE_UP && dpos === end ? v : GIVE_UP;
}
