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
import { encodeChunkHead, encodeResponseAt, fastEncode, scratch } from './cbor-encoder.js';
import { GIVE_UP, fastDecode, fastRequest } from './cbor-decoder.js';
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
    const n = encodeChunkHead(m.id, m.data.length);
    return n < 0 ? slowResult(m) : transientResult(scratch, n, m.data);
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
  const n = encodeResponseAt(scratch, 0, scratch.length, id, payload);
  return n < 0 ? slowResult({ kind: 'response', id, payload, stream: false }) : transientResult(scratch, n, undefined);
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
  return encodeResponseAt(target, at, end, id, payload);
}

function slowResult(m: Message): TransientEncoding {
  const b = slowEncode(m);
  return transientResult(b, b.length, undefined);
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
  const request = fastRequest(bytes, start, end, owned);
  if (request !== undefined) return request;
  const fast = fastDecode(bytes, start, end, owned);
  if (fast !== GIVE_UP) return decodeEnvelope(fast, identity);
  return decodeEnvelope(slowDecode(start === 0 && end === bytes.length ? bytes : bytes.subarray(start, end)), toPlain);
}

const identity = (v: unknown): unknown => v;

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
