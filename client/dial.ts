/**
 * Opening a client connection: the socket, the handshake (with the fallback to version 2 for a
 * server whose version 3 credential does not fit this computer's clock, PROTOCOL.md 3.5) and the
 * pins the connection starts with (client/server-trust.ts). client/connection.ts runs requests
 * on what this returns.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { ClientSession, pinFingerprint } from '../protocol/client-session.js';
import { CredentialCache } from '../protocol/credential.js';
import { ClientError } from './errors.js';
import { canonicalServerName, rememberServer, setServerPins } from './known-servers.js';
import { handshake, resolvePins, ServerPins } from './server-trust.js';

/** Where and how to connect, and which server keys to accept. */
export interface ConnectOptions {
  host: string;
  port: number;
  /** Expected SHA-256 fingerprint of the server key (hex, colons allowed). */
  fingerprint?: string;
  /** Several accepted fingerprints (an identity key rollover in progress); instead of `fingerprint`. */
  fingerprints?: readonly string[];
  /**
   * Trust on first use: record the key in this file, refuse a key not pinned there later; the
   * server's lines follow verified identity key rollovers (docs/PROTOCOL.md 6.4). With
   * `fingerprint` too, only that key is accepted, and it replaces the server's lines here (the
   * way to trust a new key after checking its fingerprint out of band).
   */
  knownServersFile?: string;
  /** Called with the new pins after a verified `identity.keys` notice changed them. */
  onPinsChanged?: (fingerprints: string[]) => void;
  connectTimeoutMs?: number;
  requestTimeoutMs?: number;
  /** Local address to connect from (tests use 127.0.0.x). */
  localAddress?: string;
  rekeyAfterRecords?: number;
  /**
   * Highest protocol version to offer (default 3: version 2's records, handshakes signed by the
   * server's delegated credential, PROTOCOL.md 3.5). 1 or 2 talk to servers that predate
   * version 3 (or 2) the same as before (PROTOCOL.md 8).
   */
  maxVersion?: 1 | 2 | 3;
  /** The clock that checks a version 3 server's credential (ms since the epoch; default Date.now). */
  now?: () => number;
}

/**
 * Credentials whose identity signature verified, shared by the connections of this process: one
 * RSA verification per server credential (renewed every hour or so), not one per handshake.
 */
const credentialCache = new CredentialCache(64);

/**
 * Servers whose version 3 credential did not fit this computer's clock (CREDENTIAL_EXPIRED or
 * _NOT_YET_VALID): connected to with versions up to 2 for the next 10 minutes (server name ->
 * until, ms). Version 2 is authenticated by the identity key itself, so this loses nothing.
 */
const clockFallback = new Map<string, number>();
const CLOCK_FALLBACK_MS = 10 * 60_000;

/** A socket with a finished handshake, the server's key and the pins that follow it. */
export interface Dialed {
  socket: Socket;
  session: ClientSession;
  /** The SHA-256 fingerprint (hex) of the key the server presented. */
  fingerprint: string;
  trust: ServerPins;
}

/**
 * Connects to `opts.host`:`opts.port` and runs the handshake; resolves once the server's key is
 * trusted (pinned, or recorded for trust on first use).
 * @throws ClientError from resolvePins and handshake (client/server-trust.ts): CONNECT_FAILED,
 *   CONNECT_TIMEOUT, HANDSHAKE_FAILED, SERVER_KEY_MISMATCH, SERVER_CREDENTIAL_TIME and the like
 */
export async function dial(opts: ConnectOptions): Promise<Dialed> {
  // Filed canonical (lower case, no trailing dot), as ssh does with known_hosts names.
  const server = canonicalServerName(`${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${opts.port}`);
  const { pins, successions, tofu } = resolvePins(opts, server);
  const now = opts.now ?? Date.now;
  // The key the server presented (checked against the pins after the handshake).
  let presented: string | undefined;
  const attempt = (maxVersion: number) => {
    const session = new ClientSession({
      acceptServerKey: (fp) => {
        presented = fp;
        return true;
      },
      ...(opts.rekeyAfterRecords ? { rekeyAfterRecords: opts.rekeyAfterRecords } : {}),
      maxVersion,
      now,
      credentialCache,
    });
    const socket = netConnect({ host: opts.host, port: opts.port, noDelay: true, ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) });
    return { session, socket, done: handshake(socket, session, server, pins, tofu, opts.knownServersFile, opts.connectTimeoutMs ?? 10_000) };
  };
  const fallbackUntil = clockFallback.get(server);
  const wanted = Math.min(opts.maxVersion ?? 3, fallbackUntil !== undefined && fallbackUntil > now() ? 2 : 3);
  let { session, socket, done } = attempt(wanted);
  let trusted: Awaited<typeof done>;
  try {
    trusted = await done;
  } catch (e) {
    // A credential outside this clock's window (PROTOCOL.md 3.5): once more offering up to
    // version 2, whose handshake the identity key signs itself.
    if (!(e instanceof ClientError && e.code === 'SERVER_CREDENTIAL_TIME') || wanted < 3) throw e;
    // Only for the pinned key (or a first use): anyone on the path can send a credential of its
    // own key outside the window, and must not push this client down a version by it.
    if (pins.length > 0 && !pins.some((p) => presented !== undefined && pinFingerprint(p)(presented))) throw e;
    if (clockFallback.size >= 256) clockFallback.clear(); // bounded: one entry per server
    clockFallback.set(server, now() + CLOCK_FALLBACK_MS);
    ({ session, socket, done } = attempt(2));
    trusted = await done;
  }
  const { fingerprint, spki } = trusted;
  let accepted = pins;
  if (opts.fingerprint && opts.knownServersFile) {
    // A key the user confirmed out of band: a fresh start, no remembered rotations.
    setServerPins(opts.knownServersFile, server, pins, []);
  } else if (tofu && !tofu.known) {
    rememberServer(tofu.file, server, fingerprint);
    accepted = [fingerprint];
  }
  const trust = new ServerPins(accepted, opts.fingerprint ? [] : successions, spki, {
    server,
    ...(opts.knownServersFile ? { file: opts.knownServersFile } : {}),
    ...(opts.onPinsChanged ? { onPinsChanged: opts.onPinsChanged } : {}),
  });
  return { socket, session, fingerprint, trust };
}
