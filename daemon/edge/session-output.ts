/**
 * The output side of a connection: messages sealed and written once per turn, reading paused
 * for a slow reader, NOTICEs, the orderly CLOSE, and the end of the handshake (its timer).
 */
import type { Socket } from 'node:net';
import { MAX_INFLIGHT_REQUESTS, CLOSE_SHUTDOWN } from '../../protocol/constants.js';
import type { Message } from '../../protocol/messages.js';
import type { ServerSession } from '../../protocol/server-session.js';
import type { Dispatcher } from './dispatcher.js';
import type { Limits } from '../main/config.js';
import type { Logger } from '../common/log.js';
import { writePieces } from '../../client/socket-write.js';
import { RequestLifecycle, type ConnectionEvents } from './requests.js';

/** Connection (connection.ts) adds the input side: socket events, deadlines, faults. */
export abstract class SessionOutput extends RequestLifecycle {
  protected handshakeTimer: NodeJS.Timeout | undefined;
  /** The last socket activity (ms since the epoch, 0: none), for the idle deadline. */
  protected lastActive = 0;
  private flushQueued = false;
  /**
   * True while the connection works through one read (Connection.pump): it flushes when done, so
   * answers given meanwhile need no microtask of their own (each queueMicrotask costs an
   * AsyncResource and a bound function in Node).
   */
  protected pumping = false;
  protected handshakeOpen = true;
  private pausedForOutput = false;

  constructor(
    socket: Socket,
    protected readonly session: ServerSession,
    dispatcher: Dispatcher,
    limits: Limits,
    log: Logger,
    events: ConnectionEvents,
  ) {
    super(socket, dispatcher, limits, log, events);
  }

  get isEstablished(): boolean {
    return this.session.state === 'ESTABLISHED';
  }

  /**
   * Sends an unsolicited NOTICE (PROTOCOL.md 6, kind 7) to an established session; does nothing
   * before the handshake is complete or once the connection is closing. Never throws.
   */
  notify(event: string, payload: unknown): void {
    if (this.closed || !this.isEstablished) return;
    this.guarded('notice', () => this.send({ kind: 'notice', event, payload }));
  }

  protected override afterRequest(): void {
    if (this.closed) return;
    if (this.draining && this.inflightCount === 0) return this.closeWith(CLOSE_SHUTDOWN);
    this.maybeResume();
  }

  private maybeResume(): void {
    if (this.inflightCount < MAX_INFLIGHT_REQUESTS && !this.pausedForOutput && this.socket.isPaused()) this.socket.resume();
  }

  /**
   * Seals the message now and writes it with everything else produced in this turn: a flush
   * is queued as a microtask, so the answers to all requests of one read leave in one write.
   */
  protected override send(m: Message): void {
    if (this.closed || !this.isEstablished) return;
    // Throws RECORD_TOO_LARGE before sealing anything when `m` does not fit one record; the
    // callers turn that into TOO_LARGE (responses) or cannot meet it (bounded errors, credit).
    this.session.sendMessage(m);
    this.queueFlush();
  }

  /** send() of a RESPONSE without a stream, without the message object. */
  protected override sendResponse(id: number, payload: unknown): void {
    if (this.closed || !this.isEstablished) return;
    this.session.sendResponse(id, payload);
    this.queueFlush();
  }

  /** Flushes in a microtask unless one is queued or pump() flushes when it is done. */
  private queueFlush(): void {
    if (!this.flushQueued && !this.pumping) {
      this.flushQueued = true;
      queueMicrotask(() => {
        this.flushQueued = false;
        this.guarded('flush', () => this.flush());
      });
    }
  }

  protected flush(): void {
    const out = this.session.takeOutputPieces();
    if (out.length === 0 || this.socket.destroyed) return;
    writePieces(this.socket, out);
    this.lastActive = Date.now();
    if (this.socket.writableLength > this.limits.writeHighWaterBytes && !this.pausedForOutput) {
      this.pausedForOutput = true;
      this.socket.pause();
    }
  }

  /** @internal socket listener */
  onDrain(): void {
    if (!this.pausedForOutput) return;
    this.pausedForOutput = false;
    this.maybeResume();
  }

  protected closeWith(code: number): void {
    if (this.closed) return;
    this.session.close(code);
    this.flush();
    this.closed = true;
    this.finishHandshake(false);
    this.socket.end();
  }

  protected finishHandshake(established: boolean): void {
    if (!this.handshakeOpen) return;
    this.handshakeOpen = false;
    clearTimeout(this.handshakeTimer);
    // Dropped, not only cleared: an idle connection keeps no dead Timeout object.
    this.handshakeTimer = undefined;
    this.events.handshakeDone(established);
  }
}
