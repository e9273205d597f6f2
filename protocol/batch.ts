import { BATCH_LENGTH_LEN, MAX_MESSAGES_PER_RECORD } from './constants.js';
import { ProtocolError } from './errors.js';

/**
 * Version 2 DATA records (docs/PROTOCOL.md section 6.3): the plaintext is a batch of 1 to
 * MAX_MESSAGES_PER_RECORD entries, each `length (u16 BE, >= 1) || message`, filling the
 * plaintext exactly. Pure byte layout; the sessions decode each message as in version 1.
 */

/**
 * The messages of one version 2 DATA record, as views of `plaintext` in order. Throws
 * ProtocolError BAD_MESSAGE (a `protocol` violation) for an empty record, a zero length, a
 * length past the end of the record, or more than MAX_MESSAGES_PER_RECORD entries: the whole
 * record is refused before any of its messages is delivered.
 */
export function splitBatch(plaintext: Uint8Array): Uint8Array[] {
  const bounds = new Uint32Array(2 * MAX_MESSAGES_PER_RECORD);
  const n = batchBounds(plaintext, bounds);
  const out: Uint8Array[] = [];
  for (let i = 0; i < n; i++) out.push(plaintext.subarray(bounds[2 * i]!, bounds[2 * i + 1]!));
  return out;
}

/**
 * splitBatch() without a view per message: writes each message's start and end offset in
 * `plaintext` to bounds[2i] and bounds[2i + 1] (`bounds` holds at least 2 x
 * MAX_MESSAGES_PER_RECORD entries) and returns the number of messages. The same checks and
 * errors as splitBatch().
 */
export function batchBounds(plaintext: Uint8Array, bounds: Uint32Array): number {
  let n = 0;
  let at = 0;
  if (plaintext.length === 0) throw new ProtocolError('BAD_MESSAGE', 'a DATA record carries at least one message');
  while (at < plaintext.length) {
    if (n === MAX_MESSAGES_PER_RECORD) throw new ProtocolError('BAD_MESSAGE', `more than ${MAX_MESSAGES_PER_RECORD} messages in one record`);
    if (plaintext.length - at < BATCH_LENGTH_LEN) throw new ProtocolError('BAD_MESSAGE', 'message length cut off');
    const len = (plaintext[at]! << 8) | plaintext[at + 1]!;
    at += BATCH_LENGTH_LEN;
    if (len === 0) throw new ProtocolError('BAD_MESSAGE', 'empty message in a batch');
    if (len > plaintext.length - at) throw new ProtocolError('BAD_MESSAGE', 'message runs past the end of its record');
    bounds[2 * n] = at;
    bounds[2 * n + 1] = at + len;
    n++;
    at += len;
  }
  return n;
}

/** The plaintext of one version 2 DATA record holding `messages` (encoded), for tests and tools. */
export function joinBatch(messages: readonly Uint8Array[]): Buffer {
  const parts: Buffer[] = [];
  for (const m of messages) {
    const h = Buffer.alloc(BATCH_LENGTH_LEN);
    h.writeUInt16BE(m.length);
    parts.push(h, Buffer.from(m.buffer, m.byteOffset, m.byteLength));
  }
  return Buffer.concat(parts);
}
