import { INITIAL_STREAM_WINDOW, MAX_STREAM_WINDOW } from './constants.js';
import { ProtocolError } from './errors.js';

/**
 * Per-stream flow control, as in HTTP/2: a sender may have at most `window` bytes of chunk data
 * unacknowledged; the receiver returns credit as its consumer reads. A slow reader therefore
 * holds the sender to one window, and neither side ever buffers more than that per stream.
 * No I/O here: the owner passes in `sendCredit` and pushes chunks as they arrive.
 */
export class InboundStream implements AsyncIterable<Uint8Array> {
  private readonly queue: Uint8Array[] = [];
  private windowLeft = INITIAL_STREAM_WINDOW;
  private consumedSinceGrant = 0;
  private ended = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;

  constructor(private readonly sendCredit: (bytes: number) => void) {}

  /** Called by the connection for each CHUNK; a chunk beyond the window is a protocol error. */
  push(data: Uint8Array): void {
    if (this.ended) throw new ProtocolError('UNKNOWN_STREAM', 'chunk after end');
    if (data.length > this.windowLeft) throw new ProtocolError('FLOW_CONTROL', 'peer sent beyond its credit');
    this.windowLeft -= data.length;
    this.queue.push(data);
    this.notify();
  }

  end(): void {
    this.ended = true;
    this.notify();
  }

  abort(error: Error): void {
    this.failure ??= error;
    this.notify();
  }

  get bufferedBytes(): number {
    let n = 0;
    for (const c of this.queue) n += c.length;
    return n;
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private consumed(n: number): void {
    this.consumedSinceGrant += n;
    // Grant in batches of half a window to keep CREDIT messages rare.
    if (this.consumedSinceGrant >= INITIAL_STREAM_WINDOW / 2 && !this.ended && !this.failure) {
      this.windowLeft += this.consumedSinceGrant;
      this.sendCredit(this.consumedSinceGrant);
      this.consumedSinceGrant = 0;
    }
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    for (;;) {
      if (this.failure) throw this.failure;
      const next = this.queue.shift();
      if (next) {
        this.consumed(next.length);
        yield next;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((r) => (this.wake = r));
    }
  }
}

export class OutboundCredit {
  private credit = INITIAL_STREAM_WINDOW;
  private waiter: { need: number; resolve: () => void; reject: (e: Error) => void } | undefined;

  private failure: Error | undefined;

  /**
   * A CREDIT from the peer. The credit held is capped at MAX_STREAM_WINDOW: a grant beyond the
   * cap is cut to it, not refused, so a peer that grants the largest documented CREDIT value at
   * any moment breaks nothing (PROTOCOL.md 6.1).
   */
  add(bytes: number): void {
    this.credit = Math.min(MAX_STREAM_WINDOW, this.credit + bytes);
    if (this.waiter && this.credit >= this.waiter.need) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve();
    }
  }

  /**
   * Resolves once any credit is held, and takes `min(credit, max)` bytes of it, returning that
   * number: a sender cuts its next CHUNK to what the peer granted, so a grant of any size moves
   * the stream on (PROTOCOL.md 6.1: a sender never waits while it holds credit).
   */
  /**
   * takeUpTo() without waiting: takes `min(credit, max)` bytes when credit is held and returns
   * that number, else 0 (then wait with takeUpTo). No promise when the credit is there, which
   * is the usual case of a stream. Throws the abort reason like takeUpTo.
   */
  tryTakeUpTo(max: number): number {
    if (this.failure) throw this.failure;
    if (this.credit < 1) return 0;
    const n = Math.min(this.credit, max);
    this.credit -= n;
    return n;
  }

  async takeUpTo(max: number): Promise<number> {
    if (this.failure) throw this.failure;
    if (this.credit < 1) {
      await new Promise<void>((resolve, reject) => (this.waiter = { need: 1, resolve, reject }));
    }
    const n = Math.min(this.credit, max);
    this.credit -= n;
    return n;
  }

  abort(error: Error): void {
    this.failure ??= error;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(error);
  }
}
