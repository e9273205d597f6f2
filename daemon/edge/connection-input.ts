import { ReadInput } from '../../protocol/read-buffers.js';
import { SessionOutput } from './session-output.js';
import { onRecordTimer } from './socket-events.js';

/**
 * The input side of a connection (Connection supplies the rest): bytes in, from 'data' events
 * or read into the daemon's reused buffers (user-reads.ts, protocol/read-buffers.ts), handed
 * to the session and pumped; and the record deadline, which counts the bytes held in either.
 */
export abstract class ConnectionInput extends SessionOutput {
  /**
   * The record deadline: when the record now partly received started (0: none), and one timer
   * per connection that checks it (re-armed for the rest, never per byte or per record).
   */
  private recordStart = 0;
  private recordTimer: NodeJS.Timeout | undefined;
  private bytesIn = 0;
  /** Reads into the daemon's buffers (user-reads.ts); undefined: 'data' events. */
  protected input: ReadInput | undefined = new ReadInput();

  /** Takes every event the session has now (handlers run, output flushed). */
  protected abstract pump(): void;
  abstract destroy(): void;

  /** Bytes received so far (0: the peer has sent nothing). */
  get receivedBytes(): number {
    return this.bytesIn;
  }

  protected stopRecordTimer(): void {
    clearTimeout(this.recordTimer);
  }

  /** @internal socket listener */
  onData(data: Buffer): void {
    // The socket's read buffer is ours alone: records are opened in place in it.
    if (!this.closed) this.received(data.length, data, true);
  }

  /** @internal where the next socket read lands (reads into the daemon's buffers) */
  readTarget(): Uint8Array {
    return this.input!.target();
  }

  /** @internal `n` bytes were read into readTarget(); whole records are opened where they lie. */
  onRead(n: number): void {
    if (this.closed) return;
    const s = this.session;
    const bytes = this.input!.landed(n, s.readingRecords && s.bufferedBytes === 0);
    this.received(n, bytes, this.input!.owned);
  }

  /** Bytes still waiting for the rest of their record, in the session or in the read buffer. */
  protected get pendingBytes(): number {
    return this.session.bufferedBytes + (this.input ? this.input.pending : 0);
  }

  private received(n: number, data: Buffer | undefined, owned: boolean): void {
    this.bytesIn += n;
    this.lastActive = Date.now();
    if (data) {
      this.session.receive(data, owned);
      this.pumping = true;
      try {
        this.pump();
      } finally {
        this.pumping = false;
      }
      // pump() flushes on its ways out; this writes whatever an early return (closed) left.
      this.flush();
    }
    this.watchRecord();
  }

  /**
   * A record started must be finished within recordTimeoutMs of its first byte, however the
   * bytes trickle in (nginx client_body_timeout is a deadline for the whole read in the same
   * way); the handshake has its own whole deadline.
   */
  private watchRecord(): void {
    if (this.closed || this.handshakeOpen) return;
    if (this.pendingBytes === 0) {
      this.recordStart = 0;
    } else if (this.recordStart === 0) {
      this.recordStart = Date.now();
      this.recordTimer ??= setTimeout(onRecordTimer, this.limits.recordTimeoutMs, this);
    }
  }

  /** @internal */
  onRecordTimeout(): void {
    this.recordTimer = undefined;
    if (this.closed || this.recordStart === 0) return;
    const left = this.recordStart + this.limits.recordTimeoutMs - Date.now();
    if (left > 0) {
      // An earlier record finished in time; this one has the rest of its own deadline.
      this.recordTimer = setTimeout(onRecordTimer, left, this);
      return;
    }
    this.log.debug('record deadline', { conn: this.info.id, ip: this.info.ip, buffered: this.pendingBytes });
    this.closed = true; // see onHandshakeTimeout
    this.events.violation('slow', 'record not completed in time');
    this.destroy();
  }
}
