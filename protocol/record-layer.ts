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
    const sealed = len + TAG_LEN;
    rec[0] = type;
    rec[1] = sealed >>> 24;
    rec[2] = (sealed >>> 16) & 0xff;
    rec[3] = (sealed >>> 8) & 0xff;
    rec[4] = sealed & 0xff;
    this.cipher.sealAt(rec, RECORD_HEADER_LEN, head, tail);
    out.push(rec);
    this.seq++;
  }
}

/**
 * Buffers incoming bytes and yields whole, authenticated records. It checks a declared length
 * against MAX_RECORD_SEALED before buffering the body, so a peer cannot make it allocate more
 * than one maximal record.
 *
 * Records are opened in place (issue 13: no buffer per record for the garbage collector): a
 * record inside one received buffer is decrypted where it lies, and its plaintext is a view of
 * that buffer; a record that straddles buffers is gathered into one fresh buffer of its size and
 * decrypted there. The plaintext therefore stays valid for as long as anyone references it (it
 * is never overwritten by later input), and push() must own what it is given: `owned` buffers
 * (a socket's freshly read data, which nothing else references) are used as they are, anything
 * else is copied first so that the caller's bytes are never changed.
 *
 * A KEY_UPDATE is returned like any other record, so that the session checks it against its
 * state table (PROTOCOL.md 5.1: a KEY_UPDATE before the client's FINISHED closes the
 * connection). The new key is derived only when next() is called again, that is only when the
 * session accepted the KEY_UPDATE; a session that refuses it fails and never calls next().
 */
export class RecordReader {
  private chunks: Buffer[] = [];
  /** Bytes of chunks[0] already consumed (instead of a new view per record). */
  private firstAt = 0;
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

  /**
   * Buffers `data`. With `owned` the caller hands the buffer over: it is decrypted in place and
   * must not be read, written or passed anywhere else afterwards. Without it, `data` is copied.
   */
  push(data: Buffer, owned = false): void {
    if (data.length === 0) return;
    this.chunks.push(owned ? data : Buffer.from(data));
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
    const first = this.chunks[0]!;
    let at = this.firstAt;
    let h: Buffer = first;
    if (first.length - at < RECORD_HEADER_LEN) {
      this.gather(HEADER_SCRATCH, RECORD_HEADER_LEN, false);
      h = HEADER_SCRATCH;
      at = 0;
    }
    const type = h[at]!;
    const len = ((h[at + 1]! << 24) | (h[at + 2]! << 16) | (h[at + 3]! << 8) | h[at + 4]!) >>> 0;
    if (!validType(type)) throw new ProtocolError('BAD_RECORD_TYPE', `unknown record type ${type}`);
    if (len > MAX_RECORD_SEALED) throw new ProtocolError('RECORD_TOO_LARGE', `record of ${len} bytes exceeds the limit`);
    if (len < TAG_LEN) throw new ProtocolError('RECORD_TOO_SHORT', 'record shorter than its tag');
    const total = RECORD_HEADER_LEN + len;
    if (this.buffered < total) return undefined;
    // The record: inside the first buffer (opened where it lies), or gathered into its own.
    let buf: Buffer;
    if (first.length - this.firstAt >= total) {
      buf = first;
      at = this.firstAt;
      this.firstAt += total;
      if (this.firstAt === first.length) {
        this.chunks.shift();
        this.firstAt = 0;
      }
    } else {
      buf = Buffer.allocUnsafe(total);
      at = 0;
      this.gather(buf, total, true);
    }
    this.buffered -= total;
    if (this.seq === this.rekeyAfter - 1 && type !== RECORD_KEY_UPDATE) {
      throw new ProtocolError('REKEY_REQUIRED', 'peer exceeded the per-key record limit');
    }
    const n = this.cipher.openAt(buf, at, RECORD_HEADER_LEN, len);
    if (n < 0) throw new ProtocolError('BAD_RECORD_MAC', 'record failed authentication');
    this.seq++;
    const plaintext = n === 0 ? EMPTY : buf.subarray(at + RECORD_HEADER_LEN, at + RECORD_HEADER_LEN + n);
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
    this.firstAt = 0;
    this.buffered = 0;
  }

  /**
   * Copies the next n buffered bytes into out[0..n); with `consume` they are taken out of the
   * buffer, without it (a header that straddles buffers) they stay.
   */
  private gather(out: Buffer, n: number, consume: boolean): void {
    let got = 0;
    let i = 0;
    let from = this.firstAt;
    while (got < n) {
      const c = this.chunks[i]!;
      const k = Math.min(c.length - from, n - got);
      c.copy(out, got, from, from + k);
      got += k;
      if (from + k === c.length) {
        i++;
        from = 0;
      } else from += k;
    }
    if (!consume) return;
    this.chunks.splice(0, i);
    this.firstAt = from;
  }
}

/** Shared by all readers: a header that straddles buffers is copied here and read at once. */
const HEADER_SCRATCH = Buffer.allocUnsafeSlow(RECORD_HEADER_LEN);
