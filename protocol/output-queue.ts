import { BATCH_LENGTH_LEN, CLOSE_BODY_LEN, MAX_MESSAGE_LEN_V2, MAX_MESSAGES_PER_RECORD, MAX_RECORD_PLAINTEXT, RECORD_CLOSE, RECORD_DATA } from './constants.js';
import { ProtocolError } from './errors.js';
import { encodeResponseInto, encodeResponseTransient, encodeTransient, type Message, type Payload, type TransientEncoding } from './messages.js';
import type { RecordSealer } from './record-layer.js';

/**
 * Version 2: a message of at least this many bytes (a stream CHUNK of real size, a large
 * response) is sealed in a record of its own at once, straight from its buffers, instead of
 * being copied into a batch (docs/PROTOCOL.md 6.3: large chunks keep their own records).
 */
export const OWN_RECORD_FROM = 4096;

/**
 * Plaintext buffers for version 2 batches (MAX_RECORD_PLAINTEXT bytes each), shared by all
 * sessions: a session takes one when it queues the first message of a batch and gives it back
 * when the batch is sealed (the same flush turn) or dropped, so an idle session holds none and
 * messages are written straight into it, with no buffer per message. Usually one session at a
 * time has a batch open; up to FREE_BATCH_BUFFERS spare buffers are kept.
 */
const freeBatchBuffers: Buffer[] = [];

/** What take() returns when there is nothing to send (frozen: shared by every session). */
const NO_OUTPUT: Buffer[] = Object.freeze([]) as unknown as Buffer[];
const FREE_BATCH_BUFFERS = 4;

function takeBatchBuffer(): Buffer {
  return freeBatchBuffers.pop() ?? Buffer.allocUnsafeSlow(MAX_RECORD_PLAINTEXT);
}

function giveBatchBuffer(b: Buffer): void {
  if (freeBatchBuffers.length < FREE_BATCH_BUFFERS) freeBatchBuffers.push(b);
}

/**
 * The bytes a session has produced and not yet handed to its owner, shared by the client and
 * the server session. Each record is one buffer (header, ciphertext, tag); the handshake
 * messages are pushed as they are.
 *
 * In version 2 (`batching`), messages are gathered until the owner takes the output (one flush
 * turn) and sealed together: one DATA record per MAX_MESSAGES_PER_RECORD messages or 64 KiB of
 * plaintext, so one AES-GCM record (one cipher set-up) serves many messages.
 */
export class OutputQueue {
  parts: Buffer[] = [];
  /** Version 2 batching on (set by the session once the version is known). */
  batching = false;
  /** Version 2: the batch being gathered (messages with their length prefixes), or undefined. */
  private batch: Buffer | undefined;
  private batchBytes = 0;
  private batchCount = 0;
  private batchSealer: RecordSealer | undefined;

  push(...bufs: Buffer[]): void {
    this.parts.push(...bufs);
  }

  /**
   * Seals (version 1) or queues (version 2) one message. Throws ProtocolError
   * RECORD_TOO_LARGE, before anything is sealed or queued, when the message does not fit one
   * record.
   */
  sealMessage(sealer: RecordSealer, message: Message): void {
    this.sealEncoded(sealer, encodeTransient(message));
  }

  /** sealMessage() of a RESPONSE without a stream, without the message object; the same bytes and errors. */
  sealResponse(sealer: RecordSealer, id: number, payload: Payload): void {
    if (this.batching && this.appendResponse(sealer, id, payload)) return;
    this.sealEncoded(sealer, encodeResponseTransient(id, payload));
  }

  /**
   * Version 2: encodes a small RESPONSE straight into the open batch (or a new one), after its
   * length prefix, without the encoder's scratch and a second copy. False, with nothing queued
   * and no batch left open that holds no message, when it does not fit there as a batched
   * message (OWN_RECORD_FROM bytes or more, the batch full, another sealer) or the fast
   * encoder does not take the payload: sealEncoded() then handles it (and its errors).
   */
  private appendResponse(sealer: RecordSealer, id: number, payload: Payload): boolean {
    if (this.batch && (this.batchCount === MAX_MESSAGES_PER_RECORD || this.batchSealer !== sealer)) return false;
    const fresh = this.batch === undefined;
    const b = (this.batch ??= takeBatchBuffer());
    const at = this.batchBytes + BATCH_LENGTH_LEN;
    const end = Math.min(MAX_RECORD_PLAINTEXT, at + OWN_RECORD_FROM - 1);
    let stop = -1;
    try {
      stop = encodeResponseInto(b, at, end, id, payload);
    } finally {
      // Not written (or a getter of the payload threw): a batch taken for it is given back, so
      // no empty batch is ever sealed.
      if (stop < 0 && fresh) {
        this.batch = undefined;
        giveBatchBuffer(b);
      }
    }
    if (stop < 0) return false;
    const len = stop - at;
    b[at - 2] = len >>> 8;
    b[at - 1] = len & 0xff;
    this.batchBytes = stop;
    this.batchCount++;
    this.batchSealer = sealer;
    return true;
  }

  private sealEncoded(sealer: RecordSealer, enc: TransientEncoding): void {
    const headLen = enc.length;
    const tail = enc.tail;
    if (!this.batching) {
      sealer.sealParts(RECORD_DATA, enc.bytes.subarray(0, headLen), tail, this.parts);
      return;
    }
    const len = headLen + (tail ? tail.length : 0);
    if (len > MAX_MESSAGE_LEN_V2) throw new ProtocolError('RECORD_TOO_LARGE', `refusing to seal a message of ${len} bytes`);
    if (len >= OWN_RECORD_FROM && tail) {
      // A stream CHUNK: its own record, in order after what is queued; the length prefix and the
      // small envelope go through the cipher together, the data straight from the caller's buffer.
      const lead = Buffer.allocUnsafe(BATCH_LENGTH_LEN + headLen);
      lead.writeUInt16BE(len, 0);
      lead.set(enc.bytes.subarray(0, headLen), BATCH_LENGTH_LEN);
      this.sealBatch();
      sealer.sealParts(RECORD_DATA, lead, tail, this.parts);
      return;
    }
    if (len >= OWN_RECORD_FROM) {
      // A large message: its own record (the head is only valid until the next encode).
      const prefix = Buffer.allocUnsafe(BATCH_LENGTH_LEN);
      prefix.writeUInt16BE(len, 0);
      this.sealBatch();
      sealer.sealParts(RECORD_DATA, prefix, enc.bytes.subarray(0, headLen), this.parts);
      return;
    }
    if (this.batch && (this.batchCount === MAX_MESSAGES_PER_RECORD || this.batchBytes + BATCH_LENGTH_LEN + len > MAX_RECORD_PLAINTEXT || this.batchSealer !== sealer)) {
      this.sealBatch();
    }
    const b = (this.batch ??= takeBatchBuffer());
    let at = this.batchBytes;
    b[at] = len >>> 8;
    b[at + 1] = len & 0xff;
    at += BATCH_LENGTH_LEN;
    // Copied straight from the encoder's buffer: small heads byte by byte (no view object).
    const head = enc.bytes;
    if (headLen <= 256) for (let i = 0; i < headLen; i++) b[at + i] = head[i]!;
    else b.set(head.subarray(0, headLen), at);
    at += headLen;
    if (tail) {
      b.set(tail, at);
      at += tail.length;
    }
    this.batchBytes = at;
    this.batchCount++;
    this.batchSealer = sealer;
  }

  sealClose(sealer: RecordSealer, code: number): void {
    this.sealBatch();
    const body = Buffer.alloc(CLOSE_BODY_LEN);
    body.writeUInt16BE(code);
    sealer.seal(RECORD_CLOSE, body, this.parts);
  }

  /** Version 2: seals the queued messages as one DATA record (nothing when none are queued). */
  sealBatch(): void {
    const batch = this.batch;
    if (!batch) return;
    const sealer = this.batchSealer!;
    const n = this.batchBytes;
    this.batch = undefined;
    this.batchSealer = undefined;
    this.batchBytes = 0;
    this.batchCount = 0;
    try {
      sealer.sealParts(RECORD_DATA, batch.subarray(0, n), undefined, this.parts);
    } finally {
      giveBatchBuffer(batch);
    }
  }

  /** Drops queued messages unsent (the session failed or its keys were wiped). */
  discard(): void {
    if (this.batch) giveBatchBuffer(this.batch);
    this.batch = undefined;
    this.batchSealer = undefined;
    this.batchBytes = 0;
    this.batchCount = 0;
  }

  /** The bytes to send, as buffers in order (each record one buffer). */
  take(): Buffer[] {
    this.sealBatch();
    if (this.parts.length === 0) return NO_OUTPUT;
    const out = this.parts;
    this.parts = [];
    return out;
  }

  /** The same as take(), for a vectored write. */
  takePieces(): Buffer[] {
    return this.take();
  }

  /** The bytes to send joined into one buffer (one copy), or undefined when there are none. */
  takeBytes(): Buffer | undefined {
    const out = this.take();
    if (out.length === 0) return undefined;
    return out.length === 1 ? out[0]! : Buffer.concat(out);
  }
}
