import { CLOSE_BODY_LEN, MAX_MESSAGES_PER_RECORD, PROTOCOL_VERSION_2 } from './constants.js';
import { ProtocolError } from './errors.js';
import { batchBounds } from './batch.js';
import { madeViews } from './cbor-decoder.js';
import { decodeMessage, decodeMessageAt, type Message } from './messages.js';
import { OutputQueue } from './output-queue.js';
import { lendChunk, pinBuffer } from './read-buffers.js';
import type { RecordReader, RecordSealer } from './record-layer.js';

/**
 * The message offsets of the DATA record being opened (batchBounds), shared by every session:
 * openData() fills and reads it synchronously.
 */
const BATCH_BOUNDS = new Uint32Array(2 * MAX_MESSAGES_PER_RECORD);

/**
 * The one message of a DATA record, after decoding made `views` views of the record's buffer
 * (protocol/read-buffers.ts): a CHUNK whose data is the one view is lent to its consumer (it
 * may give it back with releaseChunk), any other view pins the buffer (never reused).
 */
function lent(plaintext: Buffer, m: Message, views: number): Message {
  if (views === 0) return m;
  if (views === 1 && m.kind === 'chunk' && m.data.buffer === plaintext.buffer) lendChunk(m.data);
  else pinBuffer(plaintext.buffer);
  return m;
}

/** The states both sides' tables share (docs/PROTOCOL.md 5.1). */
type CommonState = 'ESTABLISHED' | 'CLOSED';

/**
 * What ClientSession and ServerSession share once the handshake has produced keys: the state
 * table's walk, sending messages, closing, the output, the exporter value and version 2's inbox
 * (the messages of one DATA record returned one per nextEvent()). The handshakes themselves,
 * receive() and the event loop stay in the two sessions. Pure: no I/O, no timers, no clock.
 */
export abstract class SessionCore<State extends string, Input extends string, Event extends { type: string }> {
  protected reader: RecordReader | undefined;
  protected sealer: RecordSealer | undefined;
  protected readonly output = new OutputQueue();
  /** Version 2: the messages of the last DATA record not yet returned by nextEvent(). */
  protected inbox: Message[] | undefined;
  protected inboxAt = 0;
  protected terminal: Event | undefined;
  protected version = 0;
  protected exporter: Buffer | undefined;

  protected constructor(
    protected stateValue: State,
    /** The state table: state -> input -> next state; a missing edge fails the session. */
    private readonly transitions: Readonly<Record<State, Partial<Record<Input, State>>>>,
  ) {}

  get state(): State {
    return this.stateValue;
  }

  /** The version both sides agreed on (0 before the hellos are exchanged). */
  get negotiatedVersion(): number {
    return this.version;
  }

  /** Seals one message (ESTABLISHED only; NOT_CONNECTED otherwise). */
  sendMessage(message: Message): void {
    if (this.stateValue !== ('ESTABLISHED' satisfies CommonState) || !this.sealer) throw new ProtocolError('NOT_CONNECTED', 'session is not established');
    this.output.sealMessage(this.sealer, message);
  }

  /** sendMessage() of a RESPONSE without a stream, without a message object; the same bytes and errors. */
  sendResponse(id: number, payload: unknown): void {
    if (this.stateValue !== ('ESTABLISHED' satisfies CommonState) || !this.sealer) throw new ProtocolError('NOT_CONNECTED', 'session is not established');
    this.output.sealResponse(this.sealer, id, payload);
  }

  /**
   * The next message of the current version 2 DATA record, if one is left and the session has
   * not ended: what nextEvent() would return as a `message` event, without the event object.
   */
  nextQueuedMessage(): Message | undefined {
    return this.terminal ? undefined : this.nextInboxMessage();
  }

  /** Sends CLOSE (when established) and moves to CLOSED; the keys are wiped. */
  close(code: number): void {
    if (this.sealer && this.stateValue === ('ESTABLISHED' satisfies CommonState)) this.output.sealClose(this.sealer, code);
    this.stateValue = 'CLOSED' satisfies CommonState as State;
    this.terminal ??= { type: 'closed', code } as unknown as Event;
    this.wipe();
  }

  /** The bytes to send, as buffers in order (each record one buffer: header, ciphertext, tag). */
  takeOutput(): Buffer[] {
    return this.output.take();
  }

  /** The bytes to send as unjoined pieces, in order (for a vectored write). */
  takeOutputPieces(): Buffer[] {
    return this.output.takePieces();
  }

  /** The bytes to send joined into one buffer (one copy), or undefined when there are none. */
  takeOutputBytes(): Buffer | undefined {
    return this.output.takeBytes();
  }

  /**
   * The session's exporter value (32 bytes, PROTOCOL.md 4), known once the hellos are exchanged;
   * an application binds its own authentication to it (channel binding). Undefined before.
   */
  get channelBinding(): Buffer | undefined {
    return this.exporter;
  }

  /** Wipes the keys and drops what is queued; each side adds its handshake values. */
  wipe(): void {
    this.exporter?.fill(0);
    this.reader?.wipe();
    this.sealer?.wipe();
    this.inbox = undefined;
    this.output.discard();
  }

  /** The peer's CLOSE record (its 2-byte code; 0 when the body is not 2 bytes): CLOSED, keys wiped. */
  protected peerClosed(plaintext: Buffer): Event {
    const code = plaintext.length === CLOSE_BODY_LEN ? plaintext.readUInt16BE(0) : 0;
    this.terminal = { type: 'closed', code } as unknown as Event;
    this.wipe();
    return this.terminal;
  }

  /** The next message of the current version 2 DATA record, if any is left. */
  protected nextInboxMessage(): Message | undefined {
    if (!this.inbox) return undefined;
    const message = this.inbox[this.inboxAt++]!;
    if (this.inboxAt === this.inbox.length) this.inbox = undefined;
    return message;
  }

  /**
   * A DATA record's plaintext: one message (version 1), or a batch (version 2) whose messages
   * are all decoded before the first is returned, so a malformed one refuses the whole record.
   */
  protected openData(plaintext: Buffer): Message {
    const views = madeViews();
    if (this.version < PROTOCOL_VERSION_2) return lent(plaintext, decodeMessage(plaintext, true), madeViews() - views);
    // Each message decoded where it lies in the record (no view or array of views per record).
    const n = batchBounds(plaintext, BATCH_BOUNDS);
    if (n === 1) return lent(plaintext, decodeMessageAt(plaintext, BATCH_BOUNDS[0]!, BATCH_BOUNDS[1]!, true), madeViews() - views);
    const messages: Message[] = new Array<Message>(n);
    for (let i = 0; i < n; i++) messages[i] = decodeMessageAt(plaintext, BATCH_BOUNDS[2 * i]!, BATCH_BOUNDS[2 * i + 1]!, true);
    // Views of a record of several messages are never given back one by one.
    if (madeViews() !== views) pinBuffer(plaintext.buffer);
    this.inbox = messages;
    this.inboxAt = 1;
    return messages[0]!;
  }

  /** One step of the state table; UNEXPECTED_RECORD for an input without an edge. */
  protected transition(input: Input): void {
    const next = this.transitions[this.stateValue][input];
    if (!next) throw new ProtocolError('UNEXPECTED_RECORD', `${input} not allowed in ${this.stateValue}`);
    this.stateValue = next;
  }
}
