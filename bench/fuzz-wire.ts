/**
 * The fuzzer's side of the wire: a connection from its own source address, the handshake from the
 * spec, sealing data and credit records, and waiting for the daemon's answers.
 */
import { randomBytes } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import { ephemeralFromPrivate, systemRandomness, x25519 } from '../crypto/handshake-crypto.js';
import { ClientSession, pinFingerprint, type ClientEvent } from '../protocol/client-session.js';
import { RECORD_DATA, RECORD_FINISHED, RECORD_HEADER_LEN, SERVER_HELLO_LEN } from '../protocol/constants.js';
import { parseServerHello } from '../protocol/handshake-messages.js';
import { deriveSessionSecrets } from '../protocol/key-schedule.js';
import { encodeMessage, type Message } from '../protocol/messages.js';
import { RecordSealer } from '../protocol/record-layer.js';

// ---- one protocol connection ----------------------------------------------------------------

export const HTTP_PROBE = Buffer.from('GET / HTTP/1.1\r\nHost: fuzz\r\n\r\n');
export const REFUSED_BANNED = Buffer.from('CMSP-REFUSED BANNED');

export interface Outcome {
  /** Server closed the connection (or refused it at accept). */
  closed: boolean;
  answers: Message[];
  events: ClientEvent[];
}

/** A TCP connection that records what arrives, for the fuzz cases. */
export class Wire {
  readonly chunks: Buffer[] = [];
  closed = false;
  private waiters: (() => void)[] = [];
  private constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.wake();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  static open(port: number, localAddress: string): Promise<Wire> {
    return new Promise((resolve) => {
      const s = netConnect({ host: '127.0.0.1', port, localAddress, noDelay: true });
      const w = new Wire(s);
      s.once('connect', () => resolve(w));
      s.once('close', () => resolve(w));
    });
  }

  private wake(): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
  }

  write(b: Uint8Array): void {
    if (!this.socket.destroyed) this.socket.write(b);
  }

  take(): Buffer {
    const b = Buffer.concat(this.chunks);
    this.chunks.length = 0;
    return b;
  }

  /** Resolves on new data or close, or after `ms`. */
  wait(ms: number): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      const self = this;
      function done(): void {
        clearTimeout(t);
        const i = self.waiters.indexOf(done);
        if (i >= 0) self.waiters.splice(i, 1);
        resolve();
      }
      this.waiters.push(done);
    });
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export interface Session {
  wire: Wire;
  client: ClientSession;
  /** Seals client records; positioned after the FINISHED (which it sealed). */
  forge: RecordSealer;
  pending: Buffer;
}

export const ANSWER_TIMEOUT_MS = 20000;

/** Handshake by hand; the FINISHED is sealed by `forge`, so every later record is ours. */
export async function handshake(port: number, fingerprint: string, ip: string): Promise<Session | 'refused'> {
  const wire = await Wire.open(port, ip);
  if (wire.closed) return 'refused';
  // The session wipes its ephemeral key after the agreement: keep the private bytes to rebuild it.
  const priv = randomBytes(32);
  const client = new ClientSession({
    acceptServerKey: pinFingerprint(fingerprint),
    randomness: { random32: systemRandomness.random32, ephemeral: () => ephemeralFromPrivate(priv) },
    // Version 1: every forged DATA record is one bare message (PROTOCOL.md 6).
    maxVersion: 1,
  });
  client.start();
  const hello = Buffer.concat(client.takeOutput());
  wire.write(hello);
  let got = Buffer.alloc(0);
  const deadline = Date.now() + ANSWER_TIMEOUT_MS;
  while (got.length < SERVER_HELLO_LEN + RECORD_HEADER_LEN + 48) {
    if (wire.closed) {
      wire.destroy();
      return 'refused';
    }
    if (Date.now() > deadline) throw new Error('no ServerHello');
    await wire.wait(500);
    got = Buffer.concat([got, wire.take()]);
  }
  client.receive(got);
  const ev = client.nextEvent();
  if (ev.type !== 'established') throw new Error(`handshake failed: ${JSON.stringify(ev)}`);
  const sh = parseServerHello(got.subarray(0, SERVER_HELLO_LEN));
  const secrets = deriveSessionSecrets(x25519(ephemeralFromPrivate(priv), sh.share)!, hello, sh.signed, sh.signature);
  client.takeOutput(); // its own FINISHED: ours goes out through forge
  const forge = new RecordSealer(secrets.clientToServer);
  const out: Buffer[] = [];
  forge.seal(RECORD_FINISHED, secrets.clientFinished, out);
  return { wire, client, forge, pending: Buffer.concat(out) };
}

export function sealData(s: Session, plaintext: Uint8Array): void {
  const out: Buffer[] = [];
  s.forge.seal(RECORD_DATA, plaintext, out);
  s.pending = Buffer.concat([s.pending, ...out]);
}

/** Sends what is pending plus a sentinel ping, and collects answers until it is answered or the connection closes. */
export async function flushAndSettle(s: Session, sentinelId: number, addPing = true): Promise<Outcome & { answered: boolean }> {
  if (addPing) sealData(s, encodeMessage({ kind: 'request', id: sentinelId, command: 'ping', payload: {}, stream: false }));
  s.wire.write(s.pending);
  s.pending = Buffer.alloc(0);
  const answers: Message[] = [];
  const events: ClientEvent[] = [];
  const deadline = Date.now() + ANSWER_TIMEOUT_MS;
  for (;;) {
    const got = s.wire.take();
    if (got.length > 0) s.client.receive(got);
    for (;;) {
      const e = s.client.nextEvent();
      if (e.type === 'need-data') break;
      events.push(e);
      if (e.type === 'message') {
        answers.push(e.message);
        // Credit the server's download streams so that they finish.
        if (e.message.kind === 'chunk') sealCredit(s, e.message.id, e.message.data.length);
        if (e.message.kind === 'response' && e.message.id === sentinelId) return { closed: false, answers, events, answered: true };
        if (e.message.kind === 'error' && e.message.id === sentinelId) return { closed: false, answers, events, answered: true };
        continue;
      }
      return { closed: true, answers, events, answered: false };
    }
    if (s.pending.length > 0) {
      s.wire.write(s.pending);
      s.pending = Buffer.alloc(0);
    }
    if (s.wire.closed) return { closed: true, answers, events, answered: false };
    if (Date.now() > deadline) return { closed: false, answers, events, answered: false };
    await s.wire.wait(1000);
  }
}

function sealCredit(s: Session, id: number, bytes: number): void {
  if (bytes > 0) sealData(s, encodeMessage({ kind: 'credit', id, bytes }));
}
