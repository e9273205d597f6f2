import { createRecordCipher, type RecordCipher, type RecordCipherRole } from '../crypto/record-cipher.js';
import {
  MAX_RECORD_SEALED,
  RECORD_CLOSE,
  RECORD_DATA,
  RECORD_FINISHED,
  RECORD_HEADER_LEN,
  RECORD_KEY_UPDATE,
  MAX_RECORD_PLAINTEXT,
  REKEY_AFTER_RECORDS,
  TAG_LEN,
} from './constants.js';
import { ProtocolError } from './errors.js';
import { nextDirectionKeys, wipeDirection, type DirectionKeys } from './key-schedule.js';

/**
 * AES-256-GCM records. The nonce is the direction's IV XOR the record's sequence number
 * (64-bit big-endian, right-aligned), and the sequence number is implicit: both sides count.
 * A replayed, dropped or reordered record therefore fails authentication, exactly like a
 * tampered one. The 5-byte header is the associated data.
 */
export interface OpenedRecord {
  readonly type: number;
  readonly plaintext: Buffer;
}

/**
 * The record cipher of one direction's keys (crypto/record-cipher.ts: the nonce is the IV XOR
 * the record number, counted by the cipher itself; it copies key and IV).
 */
function cipherFor(keys: DirectionKeys, role: RecordCipherRole): RecordCipher {
  return createRecordCipher(keys.key, keys.iv, role);
}


function validType(t: number): boolean {
  return t === RECORD_FINISHED || t === RECORD_DATA || t === RECORD_KEY_UPDATE || t === RECORD_CLOSE;
}

const EMPTY = Buffer.alloc(0);

/**
 * Buffers for large sealed records (stream chunks), reused: a record of POOLED_RECORD_FROM bytes
 * or more is sealed into a buffer of the full record size taken from here, and the writer gives
 * it back with recycleRecords() once the socket has written it. Without this every 64 KiB
 * record costs a fresh ArrayBuffer, and V8 answers that external-memory churn with full garbage
 * collections (issue 13: a third of the CPU of the 1 MiB echo). At most MAX_SPARE_RECORDS
 * (2 MiB) are kept; a buffer never given back is simply collected.
 */
const POOLED_RECORD_FROM = 16384;
const FULL_RECORD = RECORD_HEADER_LEN + MAX_RECORD_SEALED;
const MAX_SPARE_RECORDS = 32;
const spareRecords: ArrayBuffer[] = [];
/** The ArrayBuffers that came from here (so nothing else is ever taken into the pool). */
const pooled = new WeakSet<ArrayBuffer>();

function recordBuffer(size: number): Buffer {
  if (size < POOLED_RECORD_FROM) return Buffer.allocUnsafe(size);
  let ab = spareRecords.pop();
  if (!ab) {
    ab = new ArrayBuffer(FULL_RECORD);
    pooled.add(ab);
  }
  return Buffer.from(ab, 0, size);
}

/**
 * Gives the buffers of large sealed records among `pieces` back for reuse. Call only once
 * nothing reads them any more (the socket's write callback); other buffers are ignored.
 */
export function recycleRecords(pieces: readonly Buffer[]): void {
  for (const b of pieces) {
    if (b.length < POOLED_RECORD_FROM || spareRecords.length >= MAX_SPARE_RECORDS) continue;
    const ab = b.buffer as ArrayBuffer;
    if (!pooled.has(ab) || spareRecords.includes(ab)) continue;
    spareRecords.push(ab);
  }
}

export class RecordSealer {
  private seq = 0;
  private cipher: RecordCipher;

  constructor(
    private keys: DirectionKeys,
    private readonly rekeyAfter: number = REKEY_AFTER_RECORDS,
  ) {
    this.cipher = cipherFor(keys, 'seal');
  }

  /**
   * Seals one record, preceded by a KEY_UPDATE when the current key is used up. Pushes one
   * buffer per record onto `out`: header, ciphertext and tag, written in place by the cipher.
   */
  seal(type: number, plaintext: Uint8Array, out: Buffer[]): void {
    this.sealRecord(type, plaintext, undefined, out);
  }

  /** The same record as seal() with `head` followed by `tail` as its plaintext (not joined first). */
  sealParts(type: number, head: Uint8Array, tail: Uint8Array | undefined, out: Buffer[]): void {
    this.sealRecord(type, head, tail, out);
  }

  keyUpdate(out: Buffer[]): void {
    this.sealOne(RECORD_KEY_UPDATE, EMPTY, undefined, out);
    this.cipher.destroy();
    this.keys = nextDirectionKeys(this.keys);
    this.cipher = cipherFor(this.keys, 'seal');
    this.seq = 0;
  }

  wipe(): void {
    wipeDirection(this.keys);
    this.cipher.destroy();
  }

  private sealRecord(type: number, head: Uint8Array, tail: Uint8Array | undefined, out: Buffer[]): void {
    const len = head.length + (tail ? tail.length : 0);
    // The peer's reader refuses such a record as an attack; never put one on the wire.
    if (len > MAX_RECORD_PLAINTEXT) throw new ProtocolError('RECORD_TOO_LARGE', `refusing to seal ${len} bytes`);
    if (this.seq === this.rekeyAfter - 1 && type !== RECORD_KEY_UPDATE) this.keyUpdate(out);
    this.sealOne(type, head, tail, out);
  }

  private sealOne(type: number, head: Uint8Array, tail: Uint8Array | undefined, out: Buffer[]): void {
    const len = head.length + (tail ? tail.length : 0);
    // One buffer per record: the header is the associated data, the body is sealed after it.
    const rec = recordBuffer(RECORD_HEADER_LEN + len + TAG_LEN);
    rec[0] = type;
    rec.writeUInt32BE(len + TAG_LEN, 1);
    this.cipher.seal(rec.subarray(0, RECORD_HEADER_LEN), head, tail, rec, RECORD_HEADER_LEN);
    out.push(rec);
    this.seq++;
  }
}

/**
 * Buffers incoming bytes and yields whole, authenticated records. It checks a declared length
 * against MAX_RECORD_SEALED before buffering the body, so a peer cannot make it allocate more
 * than one maximal record.
 *
 * A KEY_UPDATE is returned like any other record, so that the session checks it against its
 * state table (PROTOCOL.md 5.1: a KEY_UPDATE before the client's FINISHED closes the
 * connection). The new key is derived only when next() is called again, that is only when the
 * session accepted the KEY_UPDATE; a session that refuses it fails and never calls next().
 */
export class RecordReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private seq = 0;
  private rekeyPending = false;
  private cipher: RecordCipher;

  constructor(
    private keys: DirectionKeys,
    private readonly rekeyAfter: number = REKEY_AFTER_RECORDS,
  ) {
    this.cipher = cipherFor(keys, 'open');
  }

  get bufferedBytes(): number {
    return this.buffered;
  }

  push(data: Buffer): void {
    if (data.length === 0) return;
    this.chunks.push(data);
    this.buffered += data.length;
  }

  /** The next record, or undefined when more bytes are needed. Throws ProtocolError. */
  next(): OpenedRecord | undefined {
    if (this.rekeyPending) {
      this.rekeyPending = false;
      this.cipher.destroy();
      this.keys = nextDirectionKeys(this.keys);
      this.cipher = cipherFor(this.keys, 'open');
      this.seq = 0;
    }
    if (this.buffered < RECORD_HEADER_LEN) return undefined;
    const head = this.peek(RECORD_HEADER_LEN);
    const type = head[0]!;
    const len = head.readUInt32BE(1);
    if (!validType(type)) throw new ProtocolError('BAD_RECORD_TYPE', `unknown record type ${type}`);
    if (len > MAX_RECORD_SEALED) throw new ProtocolError('RECORD_TOO_LARGE', `record of ${len} bytes exceeds the limit`);
    if (len < TAG_LEN) throw new ProtocolError('RECORD_TOO_SHORT', 'record shorter than its tag');
    if (this.buffered < RECORD_HEADER_LEN + len) return undefined;
    const whole = this.take(RECORD_HEADER_LEN + len);
    const aad = whole.subarray(0, RECORD_HEADER_LEN);
    if (this.seq === this.rekeyAfter - 1 && type !== RECORD_KEY_UPDATE) {
      throw new ProtocolError('REKEY_REQUIRED', 'peer exceeded the per-key record limit');
    }
    const plaintext = Buffer.allocUnsafe(len - TAG_LEN);
    if (this.cipher.open(aad, whole.subarray(RECORD_HEADER_LEN), plaintext, 0) < 0) throw new ProtocolError('BAD_RECORD_MAC', 'record failed authentication');
    this.seq++;
    if (type === RECORD_KEY_UPDATE) {
      if (plaintext.length !== 0) throw new ProtocolError('BAD_RECORD_TYPE', 'KEY_UPDATE carries no data');
      this.rekeyPending = true;
    }
    return { type, plaintext };
  }

  wipe(): void {
    wipeDirection(this.keys);
    this.cipher.destroy();
    this.chunks = [];
    this.buffered = 0;
  }

  /** The first n (<= RECORD_HEADER_LEN) bytes, copied into a small scratch when they straddle reads. */
  private peek(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    let at = 0;
    for (const c of this.chunks) {
      const k = Math.min(c.length, n - at);
      c.copy(HEADER_SCRATCH, at, 0, k);
      at += k;
      if (at === n) break;
    }
    return HEADER_SCRATCH.subarray(0, n);
  }

  /**
   * The next n buffered bytes. A record inside one read is a view of it; a record that
   * straddles reads (every 64 KiB record does) is gathered into one shared scratch buffer
   * instead of a fresh concatenation, so streaming makes no transient 64 KiB copy per record.
   * The result is valid until the next call on any reader: next() opens it at once.
   */
  private take(n: number): Buffer {
    let out: Buffer;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      let at = 0;
      let i = 0;
      while (at < n) {
        const c = this.chunks[i]!;
        const k = Math.min(c.length, n - at);
        c.copy(RECORD_SCRATCH, at, 0, k);
        at += k;
        if (k === c.length) i++;
        else this.chunks[i] = c.subarray(k);
      }
      this.chunks.splice(0, i);
      out = RECORD_SCRATCH.subarray(0, n);
    }
    this.buffered -= n;
    return out;
  }
}

/** Shared by all readers: a straddling record is copied here and opened before anything else runs. */
const RECORD_SCRATCH = Buffer.allocUnsafeSlow(RECORD_HEADER_LEN + MAX_RECORD_SEALED);
const HEADER_SCRATCH = Buffer.allocUnsafeSlow(RECORD_HEADER_LEN);
