import { aesGcmOpen, aesGcmSeal } from '../crypto/handshake-crypto.js';
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

function nonceFor(iv: Buffer, seq: number): Buffer {
  const n = Buffer.from(iv);
  // seq < 2^20 by construction; the upper 32 bits of the counter are zero.
  n.writeUInt32BE((n.readUInt32BE(8) ^ seq) >>> 0, 8);
  return n;
}

function header(type: number, sealedLen: number): Buffer {
  const h = Buffer.allocUnsafe(RECORD_HEADER_LEN);
  h[0] = type;
  h.writeUInt32BE(sealedLen, 1);
  return h;
}

const VALID_TYPES = new Set([RECORD_FINISHED, RECORD_DATA, RECORD_KEY_UPDATE, RECORD_CLOSE]);

export class RecordSealer {
  private seq = 0;
  constructor(
    private keys: DirectionKeys,
    private readonly rekeyAfter: number = REKEY_AFTER_RECORDS,
  ) {}

  /** Seals one record, preceded by a KEY_UPDATE when the current key is used up. */
  seal(type: number, plaintext: Uint8Array, out: Buffer[]): void {
    // The peer's reader refuses such a record as an attack; never put one on the wire.
    if (plaintext.length > MAX_RECORD_PLAINTEXT) throw new ProtocolError('RECORD_TOO_LARGE', `refusing to seal ${plaintext.length} bytes`);
    if (this.seq === this.rekeyAfter - 1 && type !== RECORD_KEY_UPDATE) this.keyUpdate(out);
    const h = header(type, plaintext.length + TAG_LEN);
    out.push(h, aesGcmSeal(this.keys.key, nonceFor(this.keys.iv, this.seq), h, plaintext));
    this.seq++;
  }

  keyUpdate(out: Buffer[]): void {
    const h = header(RECORD_KEY_UPDATE, TAG_LEN);
    out.push(h, aesGcmSeal(this.keys.key, nonceFor(this.keys.iv, this.seq), h, Buffer.alloc(0)));
    this.keys = nextDirectionKeys(this.keys);
    this.seq = 0;
  }

  wipe(): void {
    wipeDirection(this.keys);
  }
}

/**
 * Buffers incoming bytes and yields whole, authenticated records. It checks a declared length
 * against MAX_RECORD_SEALED before buffering the body, so a peer cannot make it allocate more
 * than one maximal record.
 */
export class RecordReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private seq = 0;

  constructor(
    private keys: DirectionKeys,
    private readonly rekeyAfter: number = REKEY_AFTER_RECORDS,
  ) {}

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
    for (;;) {
      if (this.buffered < RECORD_HEADER_LEN) return undefined;
      const head = this.peek(RECORD_HEADER_LEN);
      const type = head[0]!;
      const len = head.readUInt32BE(1);
      if (!VALID_TYPES.has(type)) throw new ProtocolError('BAD_RECORD_TYPE', `unknown record type ${type}`);
      if (len > MAX_RECORD_SEALED) throw new ProtocolError('RECORD_TOO_LARGE', `record of ${len} bytes exceeds the limit`);
      if (len < TAG_LEN) throw new ProtocolError('RECORD_TOO_SHORT', 'record shorter than its tag');
      if (this.buffered < RECORD_HEADER_LEN + len) return undefined;
      const whole = this.take(RECORD_HEADER_LEN + len);
      const aad = whole.subarray(0, RECORD_HEADER_LEN);
      if (this.seq === this.rekeyAfter - 1 && type !== RECORD_KEY_UPDATE) {
        throw new ProtocolError('REKEY_REQUIRED', 'peer exceeded the per-key record limit');
      }
      const plaintext = aesGcmOpen(this.keys.key, nonceFor(this.keys.iv, this.seq), aad, whole.subarray(RECORD_HEADER_LEN));
      if (!plaintext) throw new ProtocolError('BAD_RECORD_MAC', 'record failed authentication');
      this.seq++;
      if (type === RECORD_KEY_UPDATE) {
        if (plaintext.length !== 0) throw new ProtocolError('BAD_RECORD_TYPE', 'KEY_UPDATE carries no data');
        this.keys = nextDirectionKeys(this.keys);
        this.seq = 0;
        continue;
      }
      return { type, plaintext };
    }
  }

  wipe(): void {
    wipeDirection(this.keys);
    this.chunks = [];
    this.buffered = 0;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0]!.subarray(0, n);
  }

  private take(n: number): Buffer {
    let out: Buffer;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      const all = Buffer.concat(this.chunks);
      out = all.subarray(0, n);
      this.chunks = all.length > n ? [all.subarray(n)] : [];
    }
    this.buffered -= n;
    return out;
  }
}
