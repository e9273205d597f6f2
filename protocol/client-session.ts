import { constantTimeEqual, credentialVerify, systemRandomness, wipeEphemeral, x25519, type EphemeralKey, type HandshakeRandomness } from '../crypto/handshake-crypto.js';
import { fingerprintOf, verifyTranscript } from '../crypto/identity.js';
import {
  FINISHED_LEN,
  HS_HEADER_LEN,
  HS_REJECT,
  HS_SERVER_HELLO,
  PROTOCOL_VERSION_1,
  RECORD_CLOSE,
  RECORD_DATA,
  RECORD_FINISHED,
  RECORD_KEY_UPDATE,
  REJECT_LEN,
  PROTOCOL_VERSION_2,
  PROTOCOL_VERSION_3,
  SERVER_HELLO_V3_LEN,
} from './constants.js';
import { checkCredential, type CredentialCache } from './credential.js';
import { internalError, ProtocolError } from './errors.js';
import { encodeClientHello, parseReject, parseServerHello, parseServerHelloV3, serverHelloLength } from './handshake-messages.js';
import { deriveSessionSecrets, deriveSessionSecretsV3, signatureInput, signatureInputV3, transcriptHash } from './key-schedule.js';
import type { Message } from './messages.js';
import { RecordReader, RecordSealer } from './record-layer.js';
import { SessionCore } from './session-core.js';

/**
 * The client's side, sans I/O, mirroring ServerSession.
 *
 *   START --start()--> AWAIT_SERVER_HELLO --ServerHello--> AWAIT_SERVER_FINISHED
 *   AWAIT_SERVER_FINISHED --Finished--> ESTABLISHED (our Finished goes out here)
 *   ESTABLISHED --DATA, KEY_UPDATE--> ESTABLISHED, --CLOSE--> CLOSED; any other input --> FAILED
 *
 * Every record type is an input of the table: a KEY_UPDATE, DATA or CLOSE before the server's
 * FINISHED fails the session.
 */
export type ClientState = 'START' | 'AWAIT_SERVER_HELLO' | 'AWAIT_SERVER_FINISHED' | 'ESTABLISHED' | 'CLOSED' | 'FAILED';

export type ClientInput = 'start' | 'server-hello' | 'finished' | 'data' | 'key-update' | 'close';
type Input = ClientInput;

export const CLIENT_TRANSITIONS: Readonly<Record<ClientState, Partial<Record<Input, ClientState>>>> = {
  START: { start: 'AWAIT_SERVER_HELLO' },
  AWAIT_SERVER_HELLO: { 'server-hello': 'AWAIT_SERVER_FINISHED' },
  AWAIT_SERVER_FINISHED: { finished: 'ESTABLISHED' },
  ESTABLISHED: { data: 'ESTABLISHED', 'key-update': 'ESTABLISHED', close: 'CLOSED' },
  CLOSED: {},
  FAILED: {},
};

export type ClientEvent =
  | { type: 'need-data' }
  | { type: 'established'; fingerprint: string; version: number; spki: Buffer }
  | { type: 'message'; message: Message }
  | { type: 'closed'; code: number }
  | { type: 'error'; error: ProtocolError; fingerprint?: string; rejectCode?: number };

export interface ClientSessionOptions {
  /**
   * Decides whether the server key with this SHA-256 fingerprint (lower-case hex) is the one
   * we mean to talk to. Pinning compares with the expected value in constant time.
   */
  acceptServerKey: (fingerprint: string) => boolean;
  randomness?: HandshakeRandomness;
  minVersion?: number;
  /** Highest version offered: 3 when `now` is given, else 2 (version 3 needs a clock, section 3.5). */
  maxVersion?: number;
  rekeyAfterRecords?: number;
  /**
   * The current time in ms since the epoch, for the validity window of a version 3 server's
   * delegated credential (section 3.5). The protocol layer has no clock of its own.
   */
  now?: () => number;
  /** Credentials whose identity signature already verified (one RSA verification per credential). */
  credentialCache?: CredentialCache;
}

/** Record type -> table input, for every record type the record layer knows. */
export const CLIENT_RECORD_INPUT: Readonly<Record<number, Input>> = {
  [RECORD_FINISHED]: 'finished',
  [RECORD_DATA]: 'data',
  [RECORD_KEY_UPDATE]: 'key-update',
  [RECORD_CLOSE]: 'close',
};

export function pinFingerprint(expected: string): (fp: string) => boolean {
  const want = Buffer.from(expected, 'hex');
  return (fp) => constantTimeEqual(Buffer.from(fp, 'hex'), want);
}

export class ClientSession extends SessionCore<ClientState, Input, ClientEvent> {
  private hsBuf: Buffer[] = [];
  private hsLen = 0;
  private clientHello: Buffer | undefined;
  private eph: EphemeralKey | undefined;
  private expectedServerFinished: Buffer | undefined;
  private clientFinished: Buffer | undefined;
  private fingerprint: string | undefined;
  private spki: Buffer | undefined;
  private rejectCode: number | undefined;

  constructor(private readonly opts: ClientSessionOptions) {
    super('START', CLIENT_TRANSITIONS);
  }

  /** The highest version this client offers (section 8). */
  private get maxVersion(): number {
    const max = this.opts.maxVersion ?? PROTOCOL_VERSION_3;
    return this.opts.now ? max : Math.min(max, PROTOCOL_VERSION_2);
  }

  start(): void {
    this.transition('start');
    const rnd = this.opts.randomness ?? systemRandomness;
    this.eph = rnd.ephemeral();
    this.clientHello = encodeClientHello({
      minVersion: this.opts.minVersion ?? PROTOCOL_VERSION_1,
      maxVersion: this.maxVersion,
      random: rnd.random32(),
      share: this.eph.publicRaw,
    });
    this.output.push(this.clientHello);
  }

  /**
   * Buffers bytes. `owned`: the caller hands `data` over (a socket's freshly read buffer that
   * nothing else references): records are decrypted in place in it. Without it, bytes of records
   * are copied before they are opened, and `data` is never changed.
   */
  receive(data: Buffer, owned = false): void {
    if (this.terminal) return;
    if (this.reader) this.reader.push(data, owned);
    else {
      this.hsBuf.push(data);
      this.hsLen += data.length;
    }
  }

  nextEvent(): ClientEvent {
    if (this.terminal) return this.terminal;
    const queued = this.nextInboxMessage();
    if (queued) return { type: 'message', message: queued };
    try {
      return this.step();
    } catch (e) {
      const error = e instanceof ProtocolError ? e : internalError(e);
      this.stateValue = 'FAILED';
      this.terminal = { type: 'error', error, ...(this.fingerprint ? { fingerprint: this.fingerprint } : {}), ...(this.rejectCode !== undefined ? { rejectCode: this.rejectCode } : {}) };
      this.wipe();
      return this.terminal;
    }
  }

  override wipe(): void {
    super.wipe();
    if (this.eph) wipeEphemeral(this.eph);
    this.eph = undefined;
    this.expectedServerFinished?.fill(0);
    this.clientFinished?.fill(0);
  }

  private step(): ClientEvent {
    if (this.stateValue === 'START') throw new ProtocolError('NOT_CONNECTED', 'start() first');
    if (this.stateValue === 'AWAIT_SERVER_HELLO') return this.stepHello();
    // A loop, not recursion: a run of KEY_UPDATE records produces no event.
    for (;;) {
      const rec = this.reader!.next();
      if (!rec) return { type: 'need-data' };
      const input = CLIENT_RECORD_INPUT[rec.type];
      if (!input) throw new ProtocolError('UNEXPECTED_RECORD', `record type ${rec.type} not allowed from a server`);
      this.transition(input);
      switch (input) {
        case 'key-update':
          continue;
        case 'finished': {
          const ok = rec.plaintext.length === FINISHED_LEN && constantTimeEqual(rec.plaintext, this.expectedServerFinished!);
          if (!ok) throw new ProtocolError('BAD_FINISHED', 'server key confirmation failed');
          this.sealer!.seal(RECORD_FINISHED, this.clientFinished!, this.output.parts);
          this.expectedServerFinished!.fill(0);
          this.expectedServerFinished = undefined;
          return { type: 'established', fingerprint: this.fingerprint!, version: this.version, spki: this.spki! };
        }
        case 'data':
          return { type: 'message', message: this.openData(rec.plaintext) };
        case 'close':
          return this.peerClosed(rec.plaintext);
        default:
          throw new ProtocolError('UNEXPECTED_RECORD', 'unexpected handshake input');
      }
    }
  }

  private stepHello(): ClientEvent {
    if (this.hsLen < HS_HEADER_LEN) return { type: 'need-data' };
    const buf = this.hsBuf.length === 1 ? this.hsBuf[0]! : Buffer.concat(this.hsBuf);
    this.hsBuf = [buf];
    if (buf[0] === HS_REJECT) {
      if (buf.length < REJECT_LEN) return { type: 'need-data' };
      this.rejectCode = parseReject(buf.subarray(0, REJECT_LEN));
      throw new ProtocolError('HANDSHAKE_REJECTED', `server rejected the handshake (code ${this.rejectCode})`);
    }
    if (buf[0] !== HS_SERVER_HELLO) throw new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'expected a ServerHello');
    if (buf.length < HS_HEADER_LEN + 2) return { type: 'need-data' };
    // The body length and the version together select the layout (3.2 or 3.5); nothing else.
    const helloLen = serverHelloLength(buf);
    if (buf.length < helloLen) return { type: 'need-data' };
    const v3 = helloLen === SERVER_HELLO_V3_LEN;
    const sh = v3 ? parseServerHelloV3(buf.subarray(0, helloLen)) : parseServerHello(buf.subarray(0, helloLen));
    const min = this.opts.minVersion ?? PROTOCOL_VERSION_1;
    if (sh.version < min || sh.version > this.maxVersion) throw new ProtocolError('VERSION_UNSUPPORTED', `server chose version ${sh.version}`);
    this.fingerprint = fingerprintOf(sh.spki);
    this.spki = Buffer.from(sh.spki);
    if (!this.opts.acceptServerKey(this.fingerprint)) {
      throw new ProtocolError('SERVER_KEY_MISMATCH', 'the server key does not match the expected fingerprint');
    }
    const th = transcriptHash(this.clientHello!, sh.signed);
    if (v3) {
      // The identity key vouches for the credential (cached per credential), the credential
      // key signs this handshake's transcript.
      const h3 = sh as ReturnType<typeof parseServerHelloV3>;
      const credentialKey = checkCredential(h3.spki, h3.credential, h3.credentialSignature, this.opts.now!(), this.opts.credentialCache);
      if (!credentialVerify(credentialKey, signatureInputV3(th), h3.signature)) {
        throw new ProtocolError('BAD_SIGNATURE', 'the credential signature over the handshake does not verify');
      }
    } else if (!verifyTranscript(sh.spki, signatureInput(th), sh.signature)) {
      throw new ProtocolError('BAD_SIGNATURE', 'the server signature over the handshake does not verify');
    }
    const shared = x25519(this.eph!, sh.share);
    // The ephemeral key has served its purpose (forward secrecy: wiped after its one agreement).
    wipeEphemeral(this.eph!);
    this.eph = undefined;
    if (!shared) throw new ProtocolError('BAD_KEY_SHARE', 'server key share is invalid or of low order');
    const secrets = v3 ? deriveSessionSecretsV3(shared, this.clientHello!, sh.signed, sh.signature, th) : deriveSessionSecrets(shared, this.clientHello!, sh.signed, sh.signature);
    shared.fill(0);
    this.clientHello = undefined;
    this.version = sh.version;
    this.output.batching = this.version >= PROTOCOL_VERSION_2;
    this.expectedServerFinished = secrets.serverFinished;
    this.clientFinished = secrets.clientFinished;
    this.exporter = secrets.exporter;
    this.reader = new RecordReader(secrets.serverToClient, this.opts.rekeyAfterRecords);
    this.sealer = new RecordSealer(secrets.clientToServer, this.opts.rekeyAfterRecords);
    const rest = buf.subarray(helloLen);
    this.hsBuf = [];
    this.hsLen = 0;
    if (rest.length > 0) this.reader.push(rest); // copied: the handshake's buffer is not the reader's
    this.transition('server-hello');
    return this.step();
  }
}
