import { aesGcmOpen, aesGcmSealTo } from '../crypto/handshake-crypto.js';
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
import { IV_OFFSET, nextDirectionKeys, wipeDirection, type DirectionKeys } from './key-schedule.js';

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
 * The nonce of record `seq`, written into `into`: one scratch buffer shared by all sessions
 * (node:crypto copies the IV when a cipher is created, so it is free again at once).
 */
const NONCE = Buffer.alloc(12);

function nonceFor(into: Buffer, keys: DirectionKeys, seq: number): Buffer {
  const m = keys.material;
  m.copy(into, 0, IV_OFFSET, IV_OFFSET + 8);
  // seq < 2^20 by construction; the upper 32 bits of the counter are zero.
  into.writeUInt32BE((m.readUInt32BE(IV_OFFSET + 8) ^ seq) >>> 0, 8);
  return into;
}

function header(type: number, sealedLen: number): Buffer {
  const h = Buffer.allocUnsafe(RECORD_HEADER_LEN);
  h[0] = type;
  h.writeUInt32BE(sealedLen, 1);
  return h;
}

function validType(t: number): boolean {
  return t === RECORD_FINISHED || t === RECORD_DATA || t === RECORD_KEY_UPDATE || t === RECORD_CLOSE;
}

const EMPTY = Buffer.alloc(0);

export class RecordSealer {
  private seq = 0;
  constructor(
    private keys: DirectionKeys,
    private readonly rekeyAfter: number = REKEY_AFTER_RECORDS,
  ) {}

  /**
   * Seals one record, preceded by a KEY_UPDATE when the current key is used up. Pushes two
   * buffers per record onto `out`: the header and the sealed body.
   */
  seal(type: number, plaintext: Uint8Array, out: Buffer[]): void {
    this.sealRecord(type, plaintext, undefined, out, undefined);
  }

  /**
   * The same record as seal() with `head` followed by `tail` as its plaintext, but the
   * ciphertext pieces and the tag are pushed onto `out` unjoined (their concatenation, in
   * order, is the record), so that the caller joins everything once, in its write. When a
   * record's body takes more than one buffer, its index range [start, end) in `out` is
   * appended to `runs`, so the caller can still rebuild header/body pairs.
   */
  sealParts(type: number, head: Uint8Array, tail: Uint8Array | undefined, out: Buffer[], runs: number[]): void {
    this.sealRecord(type, head, tail, out, runs);
  }

  keyUpdate(out: Buffer[]): void {
    this.sealOne(RECORD_KEY_UPDATE, EMPTY, undefined, out, undefined);
    this.keys = nextDirectionKeys(this.keys);
    this.seq = 0;
  }

  wipe(): void {
    wipeDirection(this.keys);
  }

  /** `runs` undefined: join each body into one buffer. */
  private sealRecord(type: number, head: Uint8Array, tail: Uint8Array | undefined, out: Buffer[], runs: number[] | undefined): void {
    const len = head.length + (tail ? tail.length : 0);
    // The peer's reader refuses such a record as an attack; never put one on the wire.
    if (len > MAX_RECORD_PLAINTEXT) throw new ProtocolError('RECORD_TOO_LARGE', `refusing to seal ${len} bytes`);
    if (this.seq === this.rekeyAfter - 1 && type !== RECORD_KEY_UPDATE) this.keyUpdate(out);
    this.sealOne(type, head, tail, out, runs);
  }

  private sealOne(type: number, head: Uint8Array, tail: Uint8Array | undefined, out: Buffer[], runs: number[] | undefined): void {
    const len = head.length + (tail ? tail.length : 0);
    const h = header(type, len + TAG_LEN);
    out.push(h);
    const nonce = nonceFor(NONCE, this.keys, this.seq);
    if (!runs) {
      const body: Buffer[] = [];
      aesGcmSealTo(this.keys.key, nonce, h, head, tail, body);
      out.push(body.length === 1 ? body[0]! : Buffer.concat(body));
    } else {
      const start = out.length;
      aesGcmSealTo(this.keys.key, nonce, h, head, tail, out);
      if (out.length - start > 1) runs.push(start, out.length);
    }
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
    if (this.rekeyPending) {
      this.rekeyPending = false;
      this.keys = nextDirectionKeys(this.keys);
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
    const plaintext = aesGcmOpen(this.keys.key, nonceFor(NONCE, this.keys, this.seq), aad, whole.subarray(RECORD_HEADER_LEN));
    if (!plaintext) throw new ProtocolError('BAD_RECORD_MAC', 'record failed authentication');
    this.seq++;
    if (type === RECORD_KEY_UPDATE) {
      if (plaintext.length !== 0) throw new ProtocolError('BAD_RECORD_TYPE', 'KEY_UPDATE carries no data');
      this.rekeyPending = true;
    }
    return { type, plaintext };
  }

  wipe(): void {
    wipeDirection(this.keys);
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
