import { MAX_RECORD_SEALED, RECORD_HEADER_LEN } from './constants.js';

/**
 * Socket reads into reused buffers (issue 13, the 1 MiB echo). Node allocates a fresh
 * ArrayBuffer for every socket read (about 40 per MiB here); V8 counts them as external memory
 * until a scavenge frees them, and that external memory is what starts most of the full
 * collections of a streaming connection. Where the daemon can read into buffers of its own
 * (daemon/edge/user-reads.ts), the bytes of records go through this module instead:
 *
 * - A read lands in the shared LANDING buffer when the connection has nothing pending, or in
 *   the connection's current read buffer after the bytes it holds. Reads are synchronous with
 *   their callback, so one landing buffer serves every connection: what lands there is copied
 *   into a read buffer before the callback returns.
 * - Read buffers (READ_BUFFER_LEN bytes, one maximal record) come from a small pool. Only whole
 *   records are handed to the session, as owned bytes: they are opened in place and a record
 *   never straddles two buffers (a partial record is moved to the start of a fresh buffer when
 *   it would not fit behind the bytes already there).
 * - A read buffer goes back to the pool only when nothing can still read it: the connection has
 *   left it (no read lands there and nothing of it is pending), every view of it the session
 *   lent out was given back (a CHUNK whose data is a view, lendChunk/releaseChunk), and no
 *   other view of it was made (pinBuffer: e.g. a large byte string inside a request, or a chunk
 *   in a batch of several messages). A buffer never given back is simply collected.
 *
 * Pure: no I/O; the socket side is daemon/edge/user-reads.ts and daemon/edge/connection.ts.
 */

/** One read buffer: room for one maximal record (header, ciphertext, tag). */
export const READ_BUFFER_LEN = RECORD_HEADER_LEN + MAX_RECORD_SEALED;
/** Spare read buffers kept for reuse (READ_BUFFER_LEN bytes each; 512 KiB). */
export const MAX_SPARE_READ_BUFFERS = 8;

/** Where every connection with nothing pending reads (copied out before the read callback returns). */
const LANDING = Buffer.allocUnsafeSlow(READ_BUFFER_LEN);

interface Lending {
  /** The connection still reads into the buffer or has bytes pending there. */
  inUse: boolean;
  /** A view of the buffer was made that nobody will give back: never reuse it. */
  pinned: boolean;
  /** Chunk views lent out and not given back yet (by identity). */
  lent: Set<Uint8Array>;
}

const spare: ArrayBuffer[] = [];
/** The read buffers handed out and not yet back in the pool; only these are ever reused. */
const lending = new WeakMap<ArrayBuffer, Lending>();
/** Counters for tests and the bench: buffers made and buffers reused from the pool. */
const counts = { made: 0, reused: 0, recycled: 0 };

function takeReadBuffer(): Buffer {
  let ab = spare.pop();
  if (ab) counts.reused++;
  else {
    ab = new ArrayBuffer(READ_BUFFER_LEN);
    counts.made++;
  }
  lending.set(ab, { inUse: true, pinned: false, lent: new Set() });
  return Buffer.from(ab);
}

function maybeRecycle(ab: ArrayBuffer, l: Lending): void {
  if (l.inUse || l.pinned || l.lent.size > 0) return;
  lending.delete(ab);
  counts.recycled++;
  if (spare.length < MAX_SPARE_READ_BUFFERS) spare.push(ab);
}

function leave(b: Buffer): void {
  const ab = b.buffer as ArrayBuffer;
  const l = lending.get(ab);
  if (!l) return;
  l.inUse = false;
  maybeRecycle(ab, l);
}

/**
 * The session made `view`, a view of a record's plaintext, and hands it to exactly one consumer
 * that gives it back with releaseChunk() when nothing reads it any more. Nothing happens for
 * buffers that are not read buffers from this pool.
 */
export function lendChunk(view: Uint8Array): void {
  lending.get(view.buffer as ArrayBuffer)?.lent.add(view);
}

/** A view of `buffer` escaped that nobody will give back: the buffer is never reused. */
export function pinBuffer(buffer: ArrayBufferLike): void {
  const l = lending.get(buffer as ArrayBuffer);
  if (l) l.pinned = true;
}

/**
 * The one consumer of a chunk lent with lendChunk() is done with it: nothing reads `data` (or
 * any view of its buffer that it made) any more. Its read buffer may be reused once nothing
 * else holds it. A second call for the same chunk, or a call for a view that was never lent,
 * does nothing. Callers: daemon/edge/requests.ts (an upload echoed back, after each chunk was
 * sealed into the download: sealing copies it).
 */
export function releaseChunk(data: Uint8Array): void {
  const ab = data.buffer as ArrayBuffer;
  const l = lending.get(ab);
  if (!l || !l.lent.delete(data)) return;
  maybeRecycle(ab, l);
}

/** Pool counters (tests, bench): read buffers allocated, taken from the pool, given back. */
export function readBufferCounts(): Readonly<typeof counts> & { spare: number } {
  return { ...counts, spare: spare.length };
}

/**
 * A connection takes a read buffer (READ_BUFFER_LEN bytes) only for at least this many bytes
 * received: pending in it, or records already handed on from the buffer it leaves. Fewer
 * pending bytes are kept in a buffer of their own size. So a peer that sends the header of a
 * large record and then trickles (until the record deadline) makes the daemon hold at most 4x
 * what it sent, not 64 KiB for 6 bytes.
 */
export const POOL_FROM = 16384;

/**
 * One connection's reads (see the module comment). The socket reads into target(); after each
 * read landed() says what to hand to the session. Holds no read buffer while fewer than
 * POOL_FROM bytes are pending.
 */
export class ReadInput {
  /** LANDING, or the read buffer the connection holds. */
  private buf: Buffer = LANDING;
  /** First byte of buf not yet handed on (a read buffer only). */
  private start = 0;
  /** Bytes of buf written by reads. */
  private filled = 0;
  /** The start of a record, fewer than POOL_FROM bytes, while reads land in LANDING. */
  private tail: Buffer | undefined;
  /** A read buffer whose records were handed on in the last landed(): left at the next target(). */
  private leaving: Buffer | undefined;
  /** Whether the bytes landed() returned last may be opened in place (owned) or must be copied. */
  owned = false;

  /** Bytes read and not yet handed on (the start of a record). */
  get pending(): number {
    return this.filled - this.start + (this.tail ? this.tail.length : 0);
  }

  /**
   * Where the next read lands (the socket's next read buffer). Leaves the buffer whose records
   * were handed on by the last landed(): the session has opened them by now (the connection
   * pumps every whole record before the read callback returns).
   */
  target(): Buffer {
    if (this.leaving) {
      leave(this.leaving);
      this.leaving = undefined;
    }
    if (this.filled > 0) return this.buf.subarray(this.filled);
    // LANDING after the start of a record: no more than fits behind it in one read buffer.
    return this.tail ? LANDING.subarray(0, READ_BUFFER_LEN - this.tail.length) : this.buf;
  }

  /**
   * `n` bytes were read into the last target(). `records`: the session reads records now (its
   * handshake is done and it holds no partial record); otherwise everything is handed on as a
   * copy. Returns the bytes to hand to the session now (whole records only, or undefined),
   * `owned` saying whether they may be opened in place.
   */
  landed(n: number, records: boolean): Buffer | undefined {
    this.filled += n;
    if (!records || this.buf === LANDING) {
      const tail = this.tail;
      const total = (tail ? tail.length : 0) + this.filled - this.start;
      if (!records || total < POOL_FROM) {
        // The handshake, or a few bytes: in a buffer of their own (a copy), LANDING is free again.
        const own = Buffer.allocUnsafe(total);
        if (tail) tail.copy(own, 0);
        this.buf.copy(own, tail ? tail.length : 0, this.start, this.filled);
        this.tail = undefined;
        this.start = this.filled;
        this.settle(0, false);
        const cut = records ? wholeRecords(own, 0, own.length).end : own.length;
        if (cut < own.length) this.tail = own.subarray(cut);
        this.owned = records;
        return cut > 0 ? own.subarray(0, cut) : undefined;
      }
      // At least POOL_FROM bytes: into a read buffer of their own, read on behind them there.
      const b = takeReadBuffer();
      if (tail) tail.copy(b, 0);
      LANDING.copy(b, tail ? tail.length : 0, 0, this.filled);
      this.tail = undefined;
      this.buf = b;
      this.start = 0;
      this.filled = total;
    }
    const b = this.buf;
    const { end, need } = wholeRecords(b, this.start, this.filled);
    const out = end > this.start ? b.subarray(this.start, end) : undefined;
    this.start = end;
    this.owned = true;
    this.settle(need, out !== undefined);
    return out;
  }

  /** The connection is gone: the read buffer it held goes back when nothing else holds it. */
  close(): void {
    if (this.leaving) leave(this.leaving);
    if (this.buf !== LANDING && this.buf !== this.leaving) leave(this.buf);
    this.leaving = undefined;
    this.buf = LANDING;
    this.start = this.filled = 0;
    this.tail = undefined;
  }

  /**
   * After the pending bytes of a read buffer were handed on: none left, back to LANDING (the
   * buffer is left); a partial record that does not fit behind the bytes before it (`need`: its
   * whole length once its header is in) moves to the start of a fresh read buffer, or, when
   * fewer than POOL_FROM bytes were received into this one, into a buffer of its own size.
   */
  private settle(need: number, handedOn: boolean): void {
    const b = this.buf;
    if (b === LANDING || this.start === this.filled) {
      this.buf = LANDING;
      this.start = this.filled = 0;
    } else if (this.start + need <= b.length) {
      return; // read on into this buffer
    } else {
      const rest = this.filled - this.start;
      if (rest >= POOL_FROM || this.start >= POOL_FROM) {
        const to = takeReadBuffer();
        b.copy(to, 0, this.start, this.filled);
        this.buf = to;
        this.filled = rest;
      } else {
        this.tail = Buffer.from(b.subarray(this.start, this.filled));
        this.buf = LANDING;
        this.filled = 0;
      }
      this.start = 0;
    }
    if (b === LANDING) return;
    // Left. Records handed on just now are opened before the next target(): leave it then.
    if (!handedOn) return leave(b);
    if (this.leaving) leave(this.leaving);
    this.leaving = b;
  }
}

/**
 * The whole records in b[from, to): `end`, where the last one ends, and `need`, the whole length
 * of the partial record after it (READ_BUFFER_LEN while its header is not in). A length over
 * MAX_RECORD_SEALED ends the scan with everything taken: the record reader refuses it.
 */
function wholeRecords(b: Buffer, from: number, to: number): { end: number; need: number } {
  let at = from;
  while (to - at >= RECORD_HEADER_LEN) {
    const len = ((b[at + 1]! << 24) | (b[at + 2]! << 16) | (b[at + 3]! << 8) | b[at + 4]!) >>> 0;
    if (len > MAX_RECORD_SEALED) return { end: to, need: READ_BUFFER_LEN };
    if (to - at < RECORD_HEADER_LEN + len) return { end: at, need: RECORD_HEADER_LEN + len };
    at += RECORD_HEADER_LEN + len;
  }
  return { end: at, need: READ_BUFFER_LEN };
}
