import { CLOSE_BODY_LEN, RECORD_CLOSE, RECORD_DATA } from './constants.js';
import { encodeMessageTransient, type Message } from './messages.js';
import type { RecordSealer } from './record-layer.js';

/**
 * The bytes a session has produced and not yet handed to its owner, shared by the client and
 * the server session. Records are pushed as header + body buffers; a body sealed in several
 * pieces (sealParts) is remembered as an index range in `runs`, so take() can rejoin it while
 * takePieces() hands the pieces on for a vectored write.
 */
export class OutputQueue {
  parts: Buffer[] = [];
  /** Pairs [start, end) of indexes in `parts` that together form one record body. */
  runs: number[] = [];

  push(...bufs: Buffer[]): void {
    this.parts.push(...bufs);
  }

  sealMessage(sealer: RecordSealer, message: Message): void {
    const enc = encodeMessageTransient(message);
    sealer.sealParts(RECORD_DATA, enc.head, enc.tail, this.parts, this.runs);
  }

  sealClose(sealer: RecordSealer, code: number): void {
    const body = Buffer.alloc(CLOSE_BODY_LEN);
    body.writeUInt16BE(code);
    sealer.seal(RECORD_CLOSE, body, this.parts);
  }

  /** The bytes to send, as buffers in order (each record as its header and its body). */
  take(): Buffer[] {
    const out = this.parts;
    const runs = this.runs;
    this.parts = [];
    if (runs.length === 0) return out;
    this.runs = [];
    const paired: Buffer[] = [];
    let i = 0;
    for (let r = 0; r < runs.length; r += 2) {
      const start = runs[r]!;
      const end = runs[r + 1]!;
      while (i < start) paired.push(out[i++]!);
      paired.push(Buffer.concat(out.slice(start, end)));
      i = end;
    }
    while (i < out.length) paired.push(out[i++]!);
    return paired;
  }

  /** The bytes to send as unjoined pieces, in order (for a vectored write). */
  takePieces(): Buffer[] {
    const out = this.parts;
    this.parts = [];
    if (this.runs.length > 0) this.runs = [];
    return out;
  }

  /** The bytes to send joined into one buffer (one copy), or undefined when there are none. */
  takeBytes(): Buffer | undefined {
    const out = this.parts;
    if (out.length === 0) return undefined;
    this.parts = [];
    if (this.runs.length > 0) this.runs = [];
    return out.length === 1 ? out[0]! : Buffer.concat(out);
  }
}
