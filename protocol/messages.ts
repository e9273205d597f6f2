import { decode, encode, Token, Type, type EncodeOptions } from 'cborg';
import {
  MAX_CBOR_DEPTH,
  MAX_CHUNK_LEN,
  MAX_COMMAND_LEN,
  MAX_REQUEST_ID,
  MAX_STREAM_WINDOW,
  MSG_CANCEL,
  MSG_CHUNK,
  MSG_CREDIT,
  MSG_END,
  MSG_ERROR,
  MSG_NOTICE,
  MSG_REQUEST,
  MSG_RESPONSE,
} from './constants.js';
import { checkCborShape } from './cbor-shape.js';
import { ProtocolError } from './errors.js';

/**
 * The message layer: each DATA record carries exactly one CBOR array whose first element is
 * the message kind. Payloads are CBOR values (maps with text keys, arrays, text, byte strings,
 * integers, floats, booleans, null); the daemon validates each command's payload against its
 * schema, this layer only guarantees the envelope's shape.
 */
export type Payload = unknown;

export type Message =
  | { kind: 'request'; id: number; command: string; payload: Payload; stream: boolean }
  | { kind: 'response'; id: number; payload: Payload; stream: boolean }
  | { kind: 'error'; id: number; code: string; message: string }
  | { kind: 'chunk'; id: number; data: Uint8Array }
  | { kind: 'end'; id: number }
  | { kind: 'credit'; id: number; bytes: number }
  | { kind: 'cancel'; id: number }
  | { kind: 'notice'; event: string; payload: Payload };

/** Characters (1..64) of an ERROR's code a decoder accepts (PROTOCOL.md 2). */
export const MAX_ERROR_CODE_LEN = 64;
/** Characters (0..512) of an ERROR's message a decoder accepts (PROTOCOL.md 2, 6.2). */
export const MAX_ERROR_MESSAGE_LEN = 512;

function toWire(m: Message): unknown[] {
  switch (m.kind) {
    case 'request':
      return m.stream ? [MSG_REQUEST, m.id, m.command, m.payload, true] : [MSG_REQUEST, m.id, m.command, m.payload];
    case 'response':
      return m.stream ? [MSG_RESPONSE, m.id, m.payload, true] : [MSG_RESPONSE, m.id, m.payload];
    case 'error':
      return [MSG_ERROR, m.id, m.code, m.message];
    case 'chunk':
      return [MSG_CHUNK, m.id, m.data];
    case 'end':
      return [MSG_END, m.id];
    case 'credit':
      return [MSG_CREDIT, m.id, m.bytes];
    case 'cancel':
      return [MSG_CANCEL, m.id];
    case 'notice':
      return [MSG_NOTICE, m.event, m.payload];
  }
}

/**
 * CBOR has `undefined`, but our decoders refuse it (section 6), so the encoder never writes it:
 * a map entry whose value is undefined is left out (as JSON does), an undefined array element
 * becomes null. Without this a handler's `{ next: undefined }` became a message the peer refuses.
 */
const ENCODE_OPTIONS: EncodeOptions = {
  ignoreUndefinedProperties: true,
  typeEncoders: { undefined: () => new Token(Type.null, null) },
};

function slowEncode(m: Message): Uint8Array {
  return encode(toWire(m), ENCODE_OPTIONS);
}

export function encodeMessage(m: Message): Uint8Array {
  const n = fastEncode(toWire(m));
  return n < 0 ? slowEncode(m) : Uint8Array.prototype.slice.call(scratch, 0, n);
}

/**
 * Encodes a message for immediate sealing. The result may be a view of a shared scratch
 * buffer, valid only until the next call: the caller must consume it synchronously (the
 * record sealer copies it into the ciphertext). A CHUNK message comes back as its envelope
 * and, separately, its data, so the data is not copied before encryption. The bytes are
 * exactly those of encodeMessage.
 */
export function encodeMessageTransient(m: Message): { head: Uint8Array; tail: Uint8Array | undefined } {
  const t = encodeTransient(m);
  return { head: t.bytes.subarray(0, t.length), tail: t.tail };
}

/**
 * What encodeTransient() produced: the message's head is bytes[0, length) (usually the shared
 * scratch buffer), followed by `tail` when there is one (a CHUNK's data). One object, reused.
 */
export interface TransientEncoding {
  bytes: Uint8Array;
  length: number;
  tail: Uint8Array | undefined;
}

const transient: TransientEncoding = { bytes: new Uint8Array(0), length: 0, tail: undefined };

function transientResult(bytes: Uint8Array, length: number, tail: Uint8Array | undefined): TransientEncoding {
  transient.bytes = bytes;
  transient.length = length;
  transient.tail = tail;
  return transient;
}

/**
 * encodeMessageTransient() without a view or a result object per message (the batching path):
 * the returned object and the scratch bytes it names are valid only until the next encode.
 */
export function encodeTransient(m: Message): TransientEncoding {
  if (m.kind === 'chunk' && m.data instanceof Uint8Array) {
    // [3, id, bytes(n)] followed by the n data bytes.
    pos = 0;
    scratch[pos++] = 0x83;
    writeHead(0, MSG_CHUNK);
    if (!writeUint(0, m.id)) return slowResult(m);
    writeHead(2, m.data.length);
    return transientResult(scratch, pos, m.data);
  }
  if (m.kind === 'response' && !m.stream) return encodeResponseTransient(m.id, m.payload);
  const n = fastEncode(toWire(m));
  return n < 0 ? slowResult(m) : transientResult(scratch, n, undefined);
}

/**
 * encodeTransient({ kind: 'response', id, payload, stream: false }) without the message object
 * (a synchronous handler's answer): the same bytes, the same lifetime rules.
 */
export function encodeResponseTransient(id: number, payload: Payload): TransientEncoding {
  // [MSG_RESPONSE, id, payload] written directly: the same bytes without the wire array.
  pos = 0;
  scratch[pos++] = 0x83;
  writeHead(0, MSG_RESPONSE);
  if (writeUint(0, id) && fastValue(payload, 1)) return transientResult(scratch, pos, undefined);
  return slowResult({ kind: 'response', id, payload, stream: false });
}

/**
 * Encodes RESPONSE `id` (no stream) with `payload` straight into target[at, end) when the fast
 * encoder takes the payload and it fits: returns where the message ends, or -1 (then nothing
 * is promised about target[at, end), and the caller encodes it the usual way, which also
 * reports errors). The same bytes as encodeResponseTransient(). The batching path uses it to
 * write a synchronous answer into its batch without a copy.
 */
export function encodeResponseInto(target: Buffer, at: number, end: number, id: number, payload: Payload): number {
  if (end - at < 16 || !Number.isSafeInteger(id) || id < 0) return -1;
  wbuf = target;
  wend = end;
  try {
    pos = at;
    wbuf[pos++] = 0x83;
    writeHead(0, MSG_RESPONSE);
    writeHead(0, id);
    return fastValue(payload, 1) ? pos : -1;
  } finally {
    wbuf = scratch;
    wend = SCRATCH_LEN;
  }
}

function slowResult(m: Message): TransientEncoding {
  const b = slowEncode(m);
  return transientResult(b, b.length, undefined);
}

// ---------------------------------------------------------------------------------------------
// A direct CBOR encoder for the values messages usually carry: non-negative and negative safe
// integers, ASCII text, byte strings, arrays, plain objects with ASCII keys, booleans and null.
// It writes exactly the bytes cborg's encode() writes for them (minimal lengths; map keys sorted
// by encoded length, then bytewise). Anything else (floats, non-ASCII text, Maps, undefined,
// class instances, output beyond one record) makes it give up, and cborg encodes the message.

const SCRATCH_LEN = 65536 + 64;
const scratch = Buffer.allocUnsafe(SCRATCH_LEN);
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
function fastEncode(v: unknown): number {
  pos = 0;
  return fastValue(v, 0) ? pos : -1;
}

// ---------------------------------------------------------------------------------------------
// A direct decoder for the same subset, run after checkCborShape has vetted the structure. It
// builds plain objects at once. It accepts only what it is certain cborg (strict, no duplicate
// keys) plus toPlain would turn into the same value: minimal integer and length encodings,
// safe integers, ASCII text, byte strings (copied, as cborg copies them), arrays, maps with
// distinct ASCII text keys other than "__proto__", booleans and null. Anything else, including
// every malformed input, goes to cborg, so errors are reported exactly as before.

const GIVE_UP = Symbol('give-up');
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

const bad = (why: string): never => {
  throw new ProtocolError('BAD_MESSAGE', why);
};

function id(v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > MAX_REQUEST_ID) bad('bad request id');
  return v as number;
}

function text(v: unknown, max: number, what: string): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > max) bad(`bad ${what}`);
  return v as string;
}

function flag(v: unknown): boolean {
  if (v === undefined) return false;
  if (v !== true) bad('bad stream flag');
  return true;
}

/** Maps become plain objects with own string keys only; "__proto__" is refused outright. */
function toPlain(v: unknown): unknown {
  if (v instanceof Map) {
    const o: Record<string, unknown> = {};
    for (const [k, val] of v) {
      if (typeof k !== 'string') bad('map keys must be text');
      if (k === '__proto__') bad('forbidden map key');
      o[k as string] = toPlain(val);
    }
    return o;
  }
  if (Array.isArray(v)) return v.map(toPlain);
  return v;
}

/**
 * `owned`: the caller hands over `bytes` (a record's freshly decrypted plaintext that nothing
 * else references), so large byte strings may be returned as views of it instead of copies.
 */
export function decodeMessage(bytes: Uint8Array, owned = false): Message {
  return decodeMessageAt(bytes, 0, bytes.length, owned);
}

/**
 * decodeMessage() of the message in bytes[start, end), without a view of it (a version 2
 * batch's messages are decoded where they lie in the record). The same checks and results as
 * decodeMessage(bytes.subarray(start, end), owned); throws ProtocolError BAD_MESSAGE.
 */
export function decodeMessageAt(bytes: Uint8Array, start: number, end: number, owned = false): Message {
  checkCborShape(bytes, MAX_CBOR_DEPTH, start, end);
  viewFrom = owned ? VIEW_MIN : Infinity;
  const request = fastRequest(bytes, start, end);
  if (request !== undefined) return request;
  dpos = start;
  const fast = fastItem(bytes);
  if (fast !== GIVE_UP && dpos === end) return decodeEnvelope(fast, identity);
  return decodeEnvelope(slowDecode(start === 0 && end === bytes.length ? bytes : bytes.subarray(start, end)), toPlain);
}

const identity = (v: unknown): unknown => v;

/**
 * A REQUEST ([0, id, command, payload] or [0, id, command, payload, true]) decoded without the
 * envelope array, its command name interned. Undefined when the bytes are anything else or
 * outside the fast decoder's subset: the general path then decodes them (and reports errors).
 * Checks exactly what decodeEnvelope checks for a request.
 */
function fastRequest(b: Uint8Array, start: number, end: number): Message | undefined {
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

function slowDecode(bytes: Uint8Array): unknown {
  let raw: unknown;
  try {
    raw = decode(bytes, {
      strict: true,
      useMaps: true,
      rejectDuplicateMapKeys: true,
      allowIndefinite: false,
      allowUndefined: false,
      allowInfinity: false,
      allowNaN: false,
      allowBigInt: false,
    });
  } catch {
    bad('malformed CBOR');
  }
  return raw;
}

function decodeEnvelope(raw: unknown, toPlain: (v: unknown) => unknown): Message {
  if (!Array.isArray(raw) || raw.length < 2) return bad('a message is an array with a kind');
  const a = raw as unknown[];
  switch (a[0]) {
    case MSG_REQUEST:
      if (a.length !== 4 && a.length !== 5) bad('request has 4 or 5 elements');
      return { kind: 'request', id: id(a[1]), command: text(a[2], MAX_COMMAND_LEN, 'command'), payload: toPlain(a[3]), stream: flag(a[4]) };
    case MSG_RESPONSE:
      if (a.length !== 3 && a.length !== 4) bad('response has 3 or 4 elements');
      return { kind: 'response', id: id(a[1]), payload: toPlain(a[2]), stream: flag(a[3]) };
    case MSG_ERROR:
      if (a.length !== 4) bad('error has 4 elements');
      return {
        kind: 'error',
        id: id(a[1]),
        code: text(a[2], MAX_ERROR_CODE_LEN, 'error code'),
        message: typeof a[3] === 'string' && a[3].length <= MAX_ERROR_MESSAGE_LEN ? a[3] : bad('bad error message'),
      };
    case MSG_CHUNK: {
      if (a.length !== 3 || !(a[2] instanceof Uint8Array) || a[2].length === 0 || a[2].length > MAX_CHUNK_LEN) bad('bad chunk');
      return { kind: 'chunk', id: id(a[1]), data: a[2] as Uint8Array };
    }
    case MSG_END:
      if (a.length !== 2) bad('end has 2 elements');
      return { kind: 'end', id: id(a[1]) };
    case MSG_CREDIT: {
      const n = a[2];
      if (a.length !== 3 || typeof n !== 'number' || !Number.isInteger(n) || n <= 0 || n > MAX_STREAM_WINDOW) bad('bad credit');
      return { kind: 'credit', id: id(a[1]), bytes: n as number };
    }
    case MSG_CANCEL:
      if (a.length !== 2) bad('cancel has 2 elements');
      return { kind: 'cancel', id: id(a[1]) };
    case MSG_NOTICE:
      if (a.length !== 3) bad('notice has 3 elements');
      return { kind: 'notice', event: text(a[1], MAX_COMMAND_LEN, 'notice event'), payload: toPlain(a[2]) };
    default:
      return bad('unknown message kind');
  }
}
