/**
 * The one stream through which every kind of unauthorised access travels: traffic that is not
 * our client (recognised by the listener) and attempts to exceed a user's rights (recognised by
 * the command handlers). The ban engine and the alert mailer subscribe to it; nothing else
 * needs to know where a violation came from.
 */
export type ViolationKind =
  | 'http' // an HTTP request instead of our preamble
  | 'tls' // a TLS ClientHello
  | 'ssh' // an SSH identification banner
  | 'garbage' // bytes that are none of the above and not our magic
  | 'silent' // connected and sent nothing until the handshake timeout
  | 'handshake' // started our handshake but broke it (bad message, bad key confirmation)
  | 'protocol' // broke the record layer after the handshake (bad tag, replay, oversize)
  | 'login' // failed login (counted, not banned at once)
  | 'command' // a request naming a command the server does not have (counted: probing)
  | 'limit' // refused at a per-source or pool limit before login (counted: flooding)
  | 'slow' // a record not finished within its deadline (counted: slow drip)
  | 'rights'; // a command refused for lack of rights, or reaching another club's data

export interface ViolationEvent {
  /** Source address as the socket reported it (IPv4, or IPv6 without brackets). */
  readonly ip: string;
  readonly kind: ViolationKind;
  /** A short, log-safe description: never a password, key or decrypted personal data. */
  readonly detail: string;
  /** Milliseconds since the epoch. */
  readonly time: number;
  readonly club?: string;
  readonly user?: string;
  readonly command?: string;
  /** For rights violations: the right that was missing, as "area:action". */
  readonly right?: string;
}

export interface ViolationSink {
  report(event: ViolationEvent): void;
}

type Listener = (event: ViolationEvent) => void;

/** Fan-out to every subscriber; a failing subscriber never stops the others or the caller. */
export class ViolationBus implements ViolationSink {
  private readonly listeners = new Set<Listener>();

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  report(event: ViolationEvent): void {
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch {
        // A subscriber's bug must not turn one violation into a crash of the listener.
      }
    }
  }
}
