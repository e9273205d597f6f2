/**
 * What one connection reports to the daemon (ConnectionHooks) and what the daemon offers it in
 * return (DaemonSide): violations, counters, the identity notice, and the admission slot held.
 */
import { CLOSE_POLICY } from '../../protocol/constants.js';
import { IDENTITY_NOTICE_EVENT } from '../../protocol/identity-notice.js';
import type { Admission, RefusalReason, Slot, Stage } from './admission.js';
import type { Connection, ConnectionEvents } from './connection.js';
import type { ViolationKind } from '../bans/violations.js';

export interface DaemonSide {
  violation(ip: string, kind: ViolationKind, detail: string): void;
  admission(): Admission;
  reportLimit(ip: string, stage: Stage, reason: RefusalReason): void;
  closed(conn: Connection): void;
  evicted(conn: Connection | undefined, stage: Stage): void;
  counted(what: 'hello' | 'established' | 'request' | 'hello-drop-tolerated', command?: string, result?: string): void;
  /** See ConnectionEvents.helloDropTolerated. */
  helloDropTolerated(): boolean;
  /** The `identity.keys` NOTICE payload each session gets once established (PROTOCOL.md 6.4), if any. */
  identityNotice(): unknown;
}

/**
 * One object per connection for what it reports to the daemon and for the admission slot it
 * holds (pending handshake, then pre-login): methods on a prototype instead of seven closures
 * and two objects per connection, which an idle connection would otherwise keep (issue 13).
 */
export class ConnectionHooks implements ConnectionEvents {
  conn: Connection | undefined;
  slot: Slot | undefined;

  constructor(
    private readonly side: DaemonSide,
    private readonly ip: string,
  ) {}

  /** The admission pool gave this connection's slot to a lighter source. */
  evict(stage: Stage): void {
    this.side.evicted(this.conn, stage);
  }

  /** Logged once, by the ban engine (with the source, the count and the outcome). */
  violation(kind: ViolationKind, detail: string): void {
    this.side.violation(this.ip, kind, detail);
  }

  handshakeDone(established: boolean): void {
    this.release();
    if (!established) return;
    // Before any request of this session is read, so the notice precedes every answer.
    const notice = this.side.identityNotice();
    if (notice !== undefined) this.conn?.notify(IDENTITY_NOTICE_EVENT, notice);
    const pre = this.side.admission().admit('prelogin', this.ip, this, Date.now());
    if (pre.ok) {
      this.slot = pre.slot;
      return;
    }
    // Called from inside the connection's event loop: close once it has settled.
    const conn = this.conn;
    queueMicrotask(() => {
      this.side.reportLimit(this.ip, 'prelogin', pre.reason);
      conn?.terminate(CLOSE_POLICY);
    });
  }

  loggedIn(): void {
    this.release();
  }

  closed(): void {
    this.release();
    if (this.conn) this.side.closed(this.conn);
  }

  counted(what: 'hello' | 'established' | 'request' | 'hello-drop-tolerated', command?: string, result?: string): void {
    this.side.counted(what, command, result);
  }

  helloDropTolerated(): boolean {
    return this.side.helloDropTolerated();
  }

  private release(): void {
    if (this.slot) this.side.admission().release(this.slot);
    this.slot = undefined;
  }
}
