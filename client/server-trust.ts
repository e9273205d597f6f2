import { decodeRefusal, type Refusal } from '../protocol/refusal.js';
import type { Socket } from 'node:net';
import { fingerprintOf, normalizeFingerprint } from '../crypto/identity.js';
import { type ClientSession, pinFingerprint } from '../protocol/client-session.js';
import { CLOSE_NORMAL } from '../protocol/constants.js';
import { applyIdentityNotice, IDENTITY_NOTICE_EVENT, MAX_NOTICES_PER_SESSION, parseIdentityNotice, successionFromPins, type IdentityNotice, type SuccessionRecord } from '../protocol/identity-notice.js';
import { ClientError } from './errors.js';
import { lookupKnownServerPins, lookupSuccessions, setServerPins } from './known-servers.js';

/**
 * Server key trust for a client connection: the pins from the options or the known-servers file,
 * the handshake that checks the server key against them, and the identity notices that move them.
 */

/** A known-servers file used for trust on first use, and whether it already held this server. */
export interface Tofu {
  file: string;
  known: boolean;
}

/** The pins a connection starts with (the options that choose them, from ConnectOptions). */
export interface StartPins {
  pins: string[];
  successions: SuccessionRecord[];
  tofu: Tofu | undefined;
}

/** Pins: the explicit fingerprint, else the known-servers lines (none: trust on first use). */
export function resolvePins(opts: { fingerprint?: string; fingerprints?: readonly string[]; knownServersFile?: string }, server: string): StartPins {
  if (opts.fingerprint || (opts.fingerprints && opts.fingerprints.length > 0)) {
    const pins: string[] = [];
    for (const given of opts.fingerprint ? [opts.fingerprint] : opts.fingerprints!) {
      const fp = normalizeFingerprint(given);
      if (!fp) throw new ClientError('SERVER_KEY_MISMATCH', 'the expected fingerprint is not a SHA-256 hex value');
      if (!pins.includes(fp)) pins.push(fp);
    }
    return { pins, successions: [], tofu: undefined };
  }
  if (opts.knownServersFile) {
    const pins = lookupKnownServerPins(opts.knownServersFile, server);
    const successions = lookupSuccessions(opts.knownServersFile, server);
    return { pins, successions, tofu: { file: opts.knownServersFile, known: pins.length > 0 } };
  }
  throw new ClientError('SERVER_KEY_MISMATCH', 'give the server fingerprint, or a known-servers file for trust on first use');
}

/**
 * Runs the handshake on a freshly connecting socket and resolves with the server key once it is
 * trusted. The session accepts any key; the pin is checked once the handshake is complete, so that a
 * client with a stale pin ends the session with CLOSE (never a ban) and can read the
 * server's identity notice to tell a key rollover from an unexplained change (PROTOCOL.md 3.2).
 */
export function handshake(
  socket: Socket,
  session: ClientSession,
  server: string,
  pins: readonly string[],
  tofu: Tofu | undefined,
  knownServersFile: string | undefined,
  timeoutMs: number,
): Promise<{ fingerprint: string; spki: Buffer }> {
  const trusted = (fp: string) => (pins.length === 0 && tofu !== undefined) || pins.some((p) => pinFingerprint(p)(fp));
  return new Promise<{ fingerprint: string; spki: Buffer }>((resolve, reject) => {
    const timer = setTimeout(() => fail(new ClientError('CONNECT_TIMEOUT', `no handshake with ${server} within ${timeoutMs} ms`)), timeoutMs);
    let settled = false;
    const fail = (e: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      reject(e);
    };
    socket.once('error', (e: NodeJS.ErrnoException) => fail(new ClientError('CONNECT_FAILED', `cannot connect to ${server}: ${e.code ?? e.message}`)));
    socket.once('close', () => fail(probe ? probeError() : new ClientError('HANDSHAKE_FAILED', `${server} closed the connection during the handshake`)));
    socket.once('connect', () => {
      session.start();
      socket.write(Buffer.concat(session.takeOutput()));
    });
    // Set when the server's key is not pinned: the session is finished but only probed.
    let probe: { fingerprint: string; spki: Buffer; notice?: IdentityNotice; seen: number } | undefined;
    const probeError = (): ClientError => keyChangedError(server, probe!.fingerprint, probe!.spki, pins, probe!.notice, knownServersFile, tofu);
    const endProbe = () => {
      if (settled) return;
      const e = probeError();
      settled = true;
      clearTimeout(timer);
      // A normal CLOSE: the server counts no violation (an abort without it counts, 11).
      try {
        session.close(CLOSE_NORMAL);
        socket.end(Buffer.concat(session.takeOutput()));
      } catch {
        socket.destroy();
      }
      setTimeout(() => socket.destroy(), 2000).unref();
      reject(e);
    };
    // The server's first bytes may be a plaintext refusal (PROTOCOL.md 3.4) instead of a
    // ServerHello: held back until it is clear which.
    let first: Buffer | undefined = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      let d = chunk;
      if (first !== undefined) {
        first = Buffer.concat([first, chunk]);
        const refusal = decodeRefusal(first);
        if (refusal === 'need-data') return;
        if (refusal) return fail(refusalError(refusal, server));
        d = first;
        first = undefined;
      }
      session.receive(d);
      for (;;) {
        const ev = session.nextEvent();
        if (ev.type === 'need-data') return;
        if (probe) {
          // Only a ping is in flight: its answer (or any end) ends the probe; a NOTICE before
          // it is the server's identity notice, if it has one.
          if (ev.type === 'message' && ev.message.kind === 'notice' && ev.message.event === IDENTITY_NOTICE_EVENT) {
            // At most MAX_NOTICES_PER_SESSION are parsed (each costs up to 8 RSA checks).
            if (probe.notice === undefined && probe.seen++ < MAX_NOTICES_PER_SESSION) probe.notice = parseIdentityNotice(ev.message.payload);
            continue;
          }
          if (ev.type === 'message' && ev.message.kind !== 'response' && ev.message.kind !== 'error') continue;
          socket.off('data', onData);
          return endProbe();
        }
        if (ev.type === 'established') {
          if (!trusted(ev.fingerprint)) {
            // Key confirmation goes out with one ping; nothing else is ever sent on this session.
            probe = { fingerprint: ev.fingerprint, spki: ev.spki, seen: 0 };
            session.sendMessage({ kind: 'request', id: 1, command: 'ping', payload: {}, stream: false });
            socket.write(Buffer.concat(session.takeOutput()));
            continue;
          }
          socket.off('data', onData);
          settled = true;
          clearTimeout(timer);
          socket.removeAllListeners('error').removeAllListeners('close');
          socket.write(Buffer.concat(session.takeOutput()));
          return resolve({ fingerprint: ev.fingerprint, spki: ev.spki });
        }
        socket.off('data', onData);
        const code = ev.type === 'error' ? ev.error.code : ev.type;
        if (code === 'CREDENTIAL_EXPIRED' || code === 'CREDENTIAL_NOT_YET_VALID') {
          // PROTOCOL.md 3.5: the server's version 3 credential is outside this clock's window.
          fail(new ClientError('SERVER_CREDENTIAL_TIME', `handshake with ${server} failed: ${code} (is this computer's clock right?)`));
        } else fail(new ClientError('HANDSHAKE_FAILED', `handshake with ${server} failed: ${code}`));
        return;
      }
    };
    socket.on('data', onData);
  });
}

/** The pins of one established connection, moved by the verified identity notices it receives. */
export class ServerPins {
  /** Identity notices seen on this session; only the first MAX_NOTICES_PER_SESSION are processed. */
  private noticesSeen = 0;

  constructor(
    /** The fingerprints this client accepts for the server now (changed by identity notices). */
    public pins: string[],
    /** Remembered rotation statements for this server (PROTOCOL.md 6.4). */
    private successions: SuccessionRecord[],
    private readonly spki: Buffer,
    private readonly pinning: { server: string; file?: string; onPinsChanged?: (fps: string[]) => void },
  ) {}

  /**
   * A verified identity notice about the key of this session sets the pins for this server
   * under the rules of PROTOCOL.md 6.4 (applyIdentityNotice: a key the client has seen succeeded
   * rewrites nothing); a notice that fails any check changes nothing. Only the first
   * MAX_NOTICES_PER_SESSION notices of a session are parsed.
   */
  onIdentityNotice(payload: unknown): void {
    if (this.noticesSeen >= MAX_NOTICES_PER_SESSION) return;
    this.noticesSeen++;
    const n = parseIdentityNotice(payload);
    const next = n && applyIdentityNotice(n, this.spki, { pins: this.pins, successions: this.successions });
    if (!next) return;
    const changed = !(next.pins.length === this.pins.length && next.pins.every((fp) => this.pins.includes(fp)));
    this.pins = next.pins;
    this.successions = next.successions;
    if (this.pinning.file) {
      try {
        setServerPins(this.pinning.file, this.pinning.server, next.pins, next.successions);
      } catch {
        // The file cannot be written now: the next connection gets the notice again.
      }
    }
    if (changed) this.pinning.onPinsChanged?.(next.pins);
  }
}

/**
 * The error for a server key that is not pinned. With a verified rollover chain from a pinned key
 * to the new one (the server's identity notice), SERVER_KEY_ROTATED tells the user what to do;
 * otherwise the key change is unexplained (SERVER_KEY_CHANGED / SERVER_KEY_MISMATCH).
 */
function keyChangedError(
  server: string,
  fingerprint: string,
  spki: Buffer,
  pins: readonly string[],
  notice: IdentityNotice | undefined,
  knownServersFile: string | undefined,
  tofu: Tofu | undefined,
): ClientError {
  const chain = notice && successionFromPins(notice, pins, spki);
  if (chain) {
    const first = chain[0]!;
    const pinned = fingerprintOf(first.old);
    const how = knownServersFile
      ? `then run: commusic --server ${server} --tofu --known-servers ${knownServersFile} --fingerprint ${fingerprint} ping (records it in ${knownServersFile})`
      : `then connect with --fingerprint ${fingerprint}`;
    return new ClientError(
      'SERVER_KEY_ROTATED',
      `${server} has rolled its identity key over: your pinned key ${pinned} was replaced by ${fingerprint} (rollover announced ${new Date(first.time).toISOString()}, signed by both keys). This client was offline during the changeover, so it could not follow it. Verify ${fingerprint} with your server operator out of band (by telephone or letter; the operator reads it with "commusicctl keys show"), ${how}. No password or data was sent.`,
    );
  }
  if (tofu?.known) {
    return new ClientError('SERVER_KEY_CHANGED', `WARNING: the key of ${server} has CHANGED (now ${fingerprint}, recorded ${pins.join(', ')} in ${tofu.file}), and the server shows no rollover signed by the recorded key. Someone may be intercepting the connection; refusing to connect.`);
  }
  return new ClientError('SERVER_KEY_MISMATCH', `the key of ${server} (${fingerprint}) does not match the expected fingerprint; refusing to connect`);
}

/** What a member reads when the server refused the connection before the handshake. */
function refusalError(r: Refusal, server: string): ClientError {
  if (r.code === 'BANNED') {
    const until = r.until !== undefined ? new Date(r.until).toISOString() : 'further notice';
    return new ClientError('BANNED', `${server} refused the connection: this address is banned until ${until}; ask your club's operator`, r.until);
  }
  return new ClientError('BUSY', `${server} refused the connection: too many connections from this address or network right now; try again in a minute`);
}
