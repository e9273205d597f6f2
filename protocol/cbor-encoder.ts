/**
 * The fast CBOR encoder of the message layer (protocol/messages.ts): the values messages usually
 * carry, written byte for byte as cborg writes them, into one scratch buffer or a caller's batch.
 * Pure: no I/O.
 */
import { MSG_CHUNK, MSG_RESPONSE } from './constants.js';

// ---------------------------------------------------------------------------------------------
// A direct CBOR encoder for the values messages usually carry: non-negative and negative safe
// integers, ASCII text, byte strings, arrays, plain objects with ASCII keys, booleans and null.
// It writes exactly the bytes cborg's encode() writes for them (minimal lengths; map keys sorted
// by encoded length, then bytewise). Anything else (floats, non-ASCII text, Maps, undefined,
// class instances, output beyond one record) makes it give up, and cborg encodes the message.

const SCRATCH_LEN = 65536 + 64;
/** The encoder's output buffer (messages.ts hands views of it out for immediate sealing). */
export const scratch = Buffer.allocUnsafe(SCRATCH_LEN);
/**
 * Where the encoder writes: `scratch` up to SCRATCH_LEN, except inside encodeResponseInto(),
 * which points it at the caller's buffer and end for one call.
 */
let wbuf: Buffer = scratch;
let wend = SCRATCH_LEN;
let pos = 0;
const MAX_FAST_DEPTH = 32;
const TWO_32 = 4294967296;

/** Writes a 32-bit unsigned value big-endian at pos (bytes written directly, no bounds-checked call). */
function writeU32(v: number): void {
  wbuf[pos++] = v >>> 24;
  wbuf[pos++] = (v >>> 16) & 0xff;
  wbuf[pos++] = (v >>> 8) & 0xff;
  wbuf[pos++] = v & 0xff;
}

/** Writes a major type with a length/value argument (value a safe non-negative integer). */
function writeHead(major: number, v: number): void {
  const mt = major << 5;
  if (v < 24) wbuf[pos++] = mt | v;
  else if (v < 0x100) {
    wbuf[pos++] = mt | 24;
    wbuf[pos++] = v;
  } else if (v < 0x10000) {
    wbuf[pos++] = mt | 25;
    wbuf[pos++] = v >>> 8;
    wbuf[pos++] = v & 0xff;
  } else if (v < TWO_32) {
    wbuf[pos++] = mt | 26;
    writeU32(v);
  } else {
    wbuf[pos++] = mt | 27;
    writeU32(Math.floor(v / TWO_32));
    writeU32(v >>> 0);
  }
}

function writeUint(major: number, v: number): boolean {
  if (!Number.isSafeInteger(v) || v < 0) return false;
  writeHead(major, v);
  return true;
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false;
  return true;
}

/** cborg's default map order for text keys: shorter encoding first, then bytewise. */
function keyOrder(a: string, b: string): number {
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Sorts the first n map keys into keyOrder in place. Payload maps have a handful of keys: an insertion sort
 * allocates nothing, where Array.prototype.sort with a comparator did per map (issue 13: it was
 * a tenth of the server's CPU on pipelined pings).
 */
function sortKeys(keys: string[], n: number): void {
  if (n > 16) {
    const sorted = keys.slice(0, n).sort(keyOrder);
    for (let i = 0; i < n; i++) keys[i] = sorted[i]!;
    return;
  }
  for (let i = 1; i < n; i++) {
    const k = keys[i]!;
    let j = i - 1;
    while (j >= 0 && keyOrder(keys[j]!, k) > 0) {
      keys[j + 1] = keys[j]!;
      j--;
    }
    keys[j + 1] = k;
  }
}

/** The encoder's key arrays, one per nesting depth, reused (emptied after each map). */
const keyStacks: string[][] = [];

function fastValue(v: unknown, depth: number): boolean {
  if (wend - pos < 9) return false;
  switch (typeof v) {
    case 'number': {
      const x = v as number;
      if (!Number.isSafeInteger(x) || (x === 0 && 1 / x < 0)) return false;
      const major = x >= 0 ? 0 : 1;
      const u = x >= 0 ? x : -1 - x;
      if (u < 0x10000) writeHead(major, u);
      else {
        // Written here rather than by writeHead: a number passed to a call that is not inlined
        // is boxed (a heap number per timestamp per answer).
        const hi = Math.floor(u / TWO_32);
        const lo = u - hi * TWO_32;
        if (hi === 0) wbuf[pos++] = (major << 5) | 26;
        else {
          wbuf[pos++] = (major << 5) | 27;
          wbuf[pos++] = hi >>> 24;
          wbuf[pos++] = (hi >>> 16) & 0xff;
          wbuf[pos++] = (hi >>> 8) & 0xff;
          wbuf[pos++] = hi & 0xff;
        }
        wbuf[pos++] = lo >>> 24;
        wbuf[pos++] = (lo >>> 16) & 0xff;
        wbuf[pos++] = (lo >>> 8) & 0xff;
        wbuf[pos++] = lo & 0xff;
      }
      return true;
    }
    case 'string': {
      const s = v as string;
      if (!isAscii(s) || wend - pos < s.length + 9) return false;
      writeHead(3, s.length);
      if (s.length <= 32) {
        // Short ASCII (keys, names, codes): a loop beats the native write call.
        for (let i = 0; i < s.length; i++) wbuf[pos++] = s.charCodeAt(i);
      } else pos += wbuf.write(s, pos, 'latin1');
      return true;
    }
    case 'boolean':
      wbuf[pos++] = v ? 0xf5 : 0xf4;
      return true;
    case 'object': {
      if (v === null) {
        wbuf[pos++] = 0xf6;
        return true;
      }
      if (depth >= MAX_FAST_DEPTH) return false;
      if (v instanceof Uint8Array) {
        if (wend - pos < v.length + 9) return false;
        writeHead(2, v.length);
        wbuf.set(v, pos);
        pos += v.length;
        return true;
      }
      if (Array.isArray(v)) {
        writeHead(4, v.length);
        for (let i = 0; i < v.length; i++) if (!fastValue(v[i], depth + 1)) return false;
        return true;
      }
      if (Object.getPrototypeOf(v) !== Object.prototype) return false;
      const o = v as Record<string, unknown>;
      // The own enumerable keys (what Object.keys returns), gathered into this depth's reused
      // array instead of a new one per map (its first n entries; never shortened, as setting
      // the length to 0 would drop its storage).
      const keys = (keyStacks[depth] ??= []);
      let n = 0;
      for (const k in o) if (Object.prototype.hasOwnProperty.call(o, k)) keys[n++] = k;
      if (n > 1) sortKeys(keys, n);
      writeHead(5, n);
      let ok = true;
      for (let i = 0; i < n; i++) {
        const k = keys[i]!;
        const val = o[k];
        if (val === undefined || !fastValue(k, depth + 1) || !fastValue(val, depth + 1)) {
          ok = false;
          break;
        }
      }
      for (let i = 0; i < n; i++) keys[i] = '';
      return ok;
    }
    default:
      return false;
  }
}

/** Encodes into `scratch`; returns the length, or -1 when cborg must do it. */
export function fastEncode(v: unknown): number {
  pos = 0;
  return fastValue(v, 0) ? pos : -1;
}

/** CHUNK's head [3, id, bytes(n)] into `scratch` (the n data bytes follow it); its length, or -1. */
export function encodeChunkHead(id: number, n: number): number {
  pos = 0;
  scratch[pos++] = 0x83;
  writeHead(0, MSG_CHUNK);
  if (!writeUint(0, id)) return -1;
  writeHead(2, n);
  return pos;
}

/**
 * RESPONSE [1, id, payload] (no stream) written into target[at, end): where it ends, or -1 when
 * the fast encoder does not take the payload or it does not fit (target[at, end) is then
 * undefined and the caller encodes the message with cborg).
 */
export function encodeResponseAt(target: Buffer, at: number, end: number, id: number, payload: unknown): number {
  wbuf = target;
  wend = end;
  try {
    pos = at;
    wbuf[pos++] = 0x83;
    writeHead(0, MSG_RESPONSE);
    if (!writeUint(0, id)) return -1;
    return fastValue(payload, 1) ? pos : -1;
  } finally {
    wbuf = scratch;
    wend = SCRATCH_LEN;
  }
}
