import { decode, encode } from 'cborg';
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

const MAX_ERROR_CODE_LEN = 64;
const MAX_ERROR_MESSAGE_LEN = 512;

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

export function encodeMessage(m: Message): Uint8Array {
  return encode(toWire(m));
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

export function decodeMessage(bytes: Uint8Array): Message {
  checkCborShape(bytes, MAX_CBOR_DEPTH);
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
