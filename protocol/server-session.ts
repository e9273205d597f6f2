import { constantTimeEqual, credentialSign, systemRandomness, wipeEphemeral, x25519, type HandshakeRandomness } from '../crypto/handshake-crypto.js';
import { signTranscript, type IdentityKey } from '../crypto/identity.js';
import { classifyFirstBytes } from './classify.js';
import {
  CLIENT_HELLO_BODY_LEN,
  CLIENT_HELLO_LEN,
  FINISHED_LEN,
  HS_CLIENT_HELLO,
  HS_HEADER_LEN,
  MAGIC_LEN,
  RECORD_CLOSE,
  RECORD_DATA,
  RECORD_FINISHED,
  RECORD_KEY_UPDATE,
  REJECT_HANDSHAKE_FAILED,
  REJECT_VERSION,
  PROTOCOL_VERSION_2,
  PROTOCOL_VERSION_3,
  SUPPORTED_VERSIONS,
} from './constants.js';
import type { ServerCredential } from './credential.js';
import { internalError, ProtocolError } from './errors.js';
import { encodeReject, encodeServerHelloSigned, encodeServerHelloV3Signed, parseClientHello } from './handshake-messages.js';
import { deriveSessionSecrets, deriveSessionSecretsV3, signatureInput, signatureInputV3, transcriptHash } from './key-schedule.js';
import type { Message } from './messages.js';
import { RecordReader, RecordSealer } from './record-layer.js';
import { SessionCore } from './session-core.js';

/**
 * The server's side of a connection, sans I/O: feed it bytes with receive(), pull events with
 * nextEvent(), collect bytes to send with takeOutput(). No sockets, timers or clocks here.
 *
 *   AWAIT_CLIENT_HELLO --ClientHello--> AWAIT_CLIENT_FINISHED --Finished--> ESTABLISHED
 *   ESTABLISHED --DATA, KEY_UPDATE--> ESTABLISHED, --CLOSE--> CLOSED; any other input --> FAILED
 *
 * Every record type is an input of the table (docs/PROTOCOL.md 5.1): a KEY_UPDATE, DATA or
 * CLOSE before the client's FINISHED fails the session like any other missing edge.
 */
export type ServerState = 'AWAIT_CLIENT_HELLO' | 'AWAIT_CLIENT_FINISHED' | 'ESTABLISHED' | 'CLOSED' | 'FAILED';

export type ServerInput = 'client-hello' | 'finished' | 'data' | 'key-update' | 'close';
type Input = ServerInput;

export const SERVER_TRANSITIONS: Readonly<Record<ServerState, Partial<Record<Input, ServerState>>>> = {
  AWAIT_CLIENT_HELLO: { 'client-hello': 'AWAIT_CLIENT_FINISHED' },
  AWAIT_CLIENT_FINISHED: { finished: 'ESTABLISHED' },
  ESTABLISHED: { data: 'ESTABLISHED', 'key-update': 'ESTABLISHED', close: 'CLOSED' },
  CLOSED: {},
  FAILED: {},
};

export type ServerEvent =
  | { type: 'need-data' }
  | { type: 'hello' } // a valid ClientHello was answered: the signature has been computed
  | { type: 'established' }
  | { type: 'message'; message: Message }
  | { type: 'closed'; code: number }
  | { type: 'error'; error: ProtocolError };

export interface ServerSessionOptions {
  identity: IdentityKey;
  /**
   * The delegated credential that signs version 3 handshakes (section 3.5), issued under
   * `identity`. Without one, version 3 is not offered.
   */
  credential?: ServerCredential;
  randomness?: HandshakeRandomness;
  versions?: readonly number[];
  rekeyAfterRecords?: number;
}

/** Record type -> table input, for every record type the record layer knows (section 5). */
export const SERVER_RECORD_INPUT: Readonly<Record<number, Input>> = {
  [RECORD_FINISHED]: 'finished',
  [RECORD_DATA]: 'data',
  [RECORD_KEY_UPDATE]: 'key-update',
  [RECORD_CLOSE]: 'close',
};

export class ServerSession extends SessionCore<ServerState, Input, ServerEvent> {
  private helloBuf: Buffer[] = [];
  private helloLen = 0;
  private expectedFinished: Buffer | undefined;

  constructor(private readonly opts: ServerSessionOptions) {
    super('AWAIT_CLIENT_HELLO', SERVER_TRANSITIONS);
  }

  /**
   * Buffers bytes; all work happens in nextEvent(). `owned`: the caller hands `data` over (a
   * socket's freshly read buffer that nothing else references, or whole records in a read
   * buffer of protocol/read-buffers.ts, which learns through the decoder which views of it are
   * handed out): records are decrypted in place in it. Without it, bytes of records are copied
   * before they are opened, and `data` is never changed.
   */
  receive(data: Buffer, owned = false): void {
    if (this.terminal) return;
    if (this.reader) this.reader.push(data, owned);
    else {
      this.helloBuf.push(data);
      this.helloLen += data.length;
    }
  }

  /**
   * Whether received bytes are records now (the ClientHello has been answered): the daemon then
   * hands over whole records it owns (protocol/read-buffers.ts), before that copies.
   */
  get readingRecords(): boolean {
    return this.reader !== undefined;
  }

  /** Bytes not yet processed (for the daemon's back-pressure decision). */
  get bufferedBytes(): number {
    return this.reader ? this.reader.bufferedBytes : this.helloLen;
  }

  nextEvent(): ServerEvent {
    if (this.terminal) return this.terminal;
    const queued = this.nextInboxMessage();
    if (queued) return { type: 'message', message: queued };
    try {
      return this.step();
    } catch (e) {
      const error = e instanceof ProtocolError ? e : internalError(e);
      return this.fail(error);
    }
  }

  override wipe(): void {
    super.wipe();
    this.expectedFinished?.fill(0);
  }

  private fail(error: ProtocolError): ServerEvent {
    this.stateValue = 'FAILED';
    this.terminal = { type: 'error', error };
    // Answers already given leave before the connection closes, as in version 1 where each was
    // sealed at once: the batch of this turn is sealed before the keys are wiped.
    try {
      this.output.sealBatch();
    } catch {
      // Nothing more can be sent; the connection closes anyway.
    }
    this.wipe();
    return this.terminal;
  }

  private step(): ServerEvent {
    if (this.stateValue === 'AWAIT_CLIENT_HELLO') return this.stepHello();
    // A loop, not recursion: a run of KEY_UPDATE records produces no event.
    for (;;) {
      const rec = this.reader!.next();
      if (!rec) return { type: 'need-data' };
      const input = SERVER_RECORD_INPUT[rec.type];
      if (!input) throw new ProtocolError('UNEXPECTED_RECORD', `record type ${rec.type} not allowed from a client`);
      this.transition(input);
      switch (input) {
        case 'key-update':
          continue; // the reader derives the next key before it opens the next record
        case 'finished': {
          const ok = rec.plaintext.length === FINISHED_LEN && constantTimeEqual(rec.plaintext, this.expectedFinished!);
          if (!ok) throw new ProtocolError('BAD_FINISHED', 'client key confirmation failed');
          this.expectedFinished!.fill(0);
          this.expectedFinished = undefined;
          return { type: 'established' };
        }
        case 'data':
          return { type: 'message', message: this.openData(rec.plaintext) };
        case 'close':
          return this.peerClosed(rec.plaintext);
        default:
          throw new ProtocolError('UNEXPECTED_RECORD', 'client-hello after the handshake');
      }
    }
  }

  private stepHello(): ServerEvent {
    const head = this.helloBuf.length === 1 ? this.helloBuf[0]! : Buffer.concat(this.helloBuf);
    this.helloBuf = [head];
    const verdict = classifyFirstBytes(head);
    if (verdict === 'need-data') return { type: 'need-data' };
    if (verdict !== 'client') {
      const code = ({ http: 'NOT_CLIENT_HTTP', tls: 'NOT_CLIENT_TLS', ssh: 'NOT_CLIENT_SSH', garbage: 'NOT_CLIENT_GARBAGE' } as const)[verdict];
      throw new ProtocolError(code, `first bytes look like ${verdict}`);
    }
    // The header is checked as soon as its 3 bytes are in (section 3), not when the body is.
    if (head.length >= MAGIC_LEN + 1 && head[MAGIC_LEN] !== HS_CLIENT_HELLO) {
      throw new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'expected a ClientHello');
    }
    if (head.length >= MAGIC_LEN + HS_HEADER_LEN && head.readUInt16BE(MAGIC_LEN + 1) !== CLIENT_HELLO_BODY_LEN) {
      throw new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'ClientHello has the wrong body length');
    }
    if (head.length < CLIENT_HELLO_LEN) return { type: 'need-data' };
    const helloBytes = head.subarray(0, CLIENT_HELLO_LEN);
    let hello: ReturnType<typeof parseClientHello>;
    try {
      hello = parseClientHello(helloBytes);
    } catch (e) {
      // min_version 0 or min > max: no version in common, so the same Reject as below.
      if (e instanceof ProtocolError && e.code === 'VERSION_UNSUPPORTED') this.output.push(encodeReject(REJECT_VERSION));
      throw e;
    }
    const versions = this.opts.versions ?? SUPPORTED_VERSIONS;
    const credential = this.opts.credential;
    const common = versions.filter((v) => v >= hello.minVersion && v <= hello.maxVersion && (v !== PROTOCOL_VERSION_3 || credential !== undefined));
    if (common.length === 0) {
      this.output.push(encodeReject(REJECT_VERSION));
      throw new ProtocolError('VERSION_UNSUPPORTED', `client offers versions ${hello.minVersion}..${hello.maxVersion}`);
    }
    this.version = Math.max(...common);
    const rnd = this.opts.randomness ?? systemRandomness;
    const eph = rnd.ephemeral();
    const shared = x25519(eph, hello.share);
    // Forward secrecy: the ephemeral key is wiped right after its one agreement.
    wipeEphemeral(eph);
    if (!shared) {
      this.output.push(encodeReject(REJECT_HANDSHAKE_FAILED));
      throw new ProtocolError('BAD_KEY_SHARE', 'client key share is invalid or of low order');
    }
    let signed: Buffer;
    let signature: Buffer;
    let secrets: ReturnType<typeof deriveSessionSecrets>;
    if (this.version === PROTOCOL_VERSION_3) {
      // Signed by the credential key (Ed25519), which the identity key vouched for (3.5).
      const c = credential!;
      signed = encodeServerHelloV3Signed({ version: this.version, random: rnd.random32(), share: eph.publicRaw, spki: c.spki, credential: c.bytes, credentialSignature: c.signature });
      const th = transcriptHash(helloBytes, signed);
      signature = credentialSign(c.key, signatureInputV3(th));
      secrets = deriveSessionSecretsV3(shared, helloBytes, signed, signature, th);
    } else {
      signed = encodeServerHelloSigned({ version: this.version, random: rnd.random32(), share: eph.publicRaw, spki: this.opts.identity.spki });
      signature = signTranscript(this.opts.identity, signatureInput(transcriptHash(helloBytes, signed)));
      secrets = deriveSessionSecrets(shared, helloBytes, signed, signature);
    }
    shared.fill(0);
    this.output.push(signed, signature);
    this.expectedFinished = secrets.clientFinished;
    this.exporter = secrets.exporter;
    this.reader = new RecordReader(secrets.clientToServer, this.opts.rekeyAfterRecords);
    this.sealer = new RecordSealer(secrets.serverToClient, this.opts.rekeyAfterRecords);
    const rest = head.subarray(CLIENT_HELLO_LEN);
    this.helloBuf = [];
    this.helloLen = 0;
    if (rest.length > 0) this.reader.push(rest); // copied: the handshake's buffer is not the reader's
    this.transition('client-hello');
    // Confirm our side at once: the server Finished goes out right after the hello, so the
    // client can verify key possession without waiting for us to read its Finished.
    this.sealer.seal(RECORD_FINISHED, secrets.serverFinished, this.output.parts);
    secrets.serverFinished.fill(0);
    this.output.batching = this.version >= PROTOCOL_VERSION_2;
    return { type: 'hello' };
  }
}

