/**
 * A minimal POSIX ustar writer and streaming reader: the plaintext inside a backup archive is a
 * plain tar file, so `commusicctl backup decrypt` gives a club something any tar tool opens
 * (manifest.json, club.sqlite, documents/...). Only regular files; names up to 100 bytes (we
 * choose them); sizes below 8 GiB per entry (11 octal digits).
 */
import { BackupError } from './backup-errors.js';

const BLOCK = 512;
export const MAX_TAR_ENTRY = 8 * 1024 ** 3 - 1;

function octal(n: number, width: number): string {
  return n.toString(8).padStart(width - 1, '0') + '\0';
}

export function tarHeader(name: string, size: number, mtimeSec: number): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  if (nameBytes.length === 0 || nameBytes.length > 100) throw new BackupError('ARCHIVE_INVALID', `tar entry name ${JSON.stringify(name)} is empty or too long`);
  if (!Number.isSafeInteger(size) || size < 0 || size > MAX_TAR_ENTRY) throw new BackupError('ARCHIVE_INVALID', `tar entry ${name} is too large (${size} bytes)`);
  const h = Buffer.alloc(BLOCK);
  nameBytes.copy(h, 0);
  h.write(octal(0o600, 8), 100, 'ascii');
  h.write(octal(0, 8), 108, 'ascii');
  h.write(octal(0, 8), 116, 'ascii');
  h.write(octal(size, 12), 124, 'ascii');
  h.write(octal(Math.max(0, Math.floor(mtimeSec)), 12), 136, 'ascii');
  h.write('        ', 148, 'ascii');
  h.write('0', 156, 'ascii');
  h.write('ustar\0', 257, 'ascii');
  h.write('00', 263, 'ascii');
  h.write('commusic', 265, 'ascii');
  h.write('commusic', 297, 'ascii');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(octal(sum, 7) + ' ', 148, 'ascii');
  return h;
}

export function tarPadding(size: number): Buffer {
  const r = size % BLOCK;
  return Buffer.alloc(r === 0 ? 0 : BLOCK - r);
}

export const TAR_END = Buffer.alloc(BLOCK * 2);

/** Pull exactly-sized pieces out of an async byte source. */
export class ByteReader {
  readonly #it: AsyncIterator<Uint8Array>;
  #buf: Buffer = Buffer.alloc(0);
  #done = false;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]();
  }

  async #fill(): Promise<boolean> {
    if (this.#done) return false;
    const r = await this.#it.next();
    if (r.done) {
      this.#done = true;
      return false;
    }
    const c = Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, c]) : c;
    return true;
  }

  /** Exactly n bytes, or fewer only at the end of the source. */
  async read(n: number): Promise<Buffer> {
    while (this.#buf.length < n) if (!(await this.#fill())) break;
    const k = Math.min(n, this.#buf.length);
    const out = this.#buf.subarray(0, k);
    this.#buf = this.#buf.subarray(k);
    return out;
  }

  /** n bytes as a sequence of pieces (no more than what the source delivers at once). */
  async *pieces(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (this.#buf.length === 0 && !(await this.#fill())) throw new BackupError('ARCHIVE_TRUNCATED', 'backup archive ends inside an entry');
      const k = Math.min(left, this.#buf.length);
      const out = this.#buf.subarray(0, k);
      this.#buf = this.#buf.subarray(k);
      left -= k;
      yield out;
    }
  }

  /** Drain the rest; true when nothing but zero bytes followed. */
  async restIsZero(): Promise<boolean> {
    for (;;) {
      for (const b of this.#buf) if (b !== 0) return false;
      this.#buf = Buffer.alloc(0);
      if (!(await this.#fill())) return true;
    }
  }
}

export interface TarEntry {
  name: string;
  size: number;
}

function parseOctal(b: Buffer): number {
  const s = b.toString('ascii').replace(/\0.*$/s, '').trim();
  if (!/^[0-7]+$/.test(s)) throw new BackupError('ARCHIVE_INVALID', 'tar header has a malformed number');
  return parseInt(s, 8);
}

/** Next entry header, or undefined at the end-of-archive marker. */
export async function readTarHeader(r: ByteReader): Promise<TarEntry | undefined> {
  const h = await r.read(BLOCK);
  if (h.length === 0) throw new BackupError('ARCHIVE_TRUNCATED', 'backup archive ends without the end-of-archive marker');
  if (h.length < BLOCK) throw new BackupError('ARCHIVE_TRUNCATED', 'backup archive ends inside an entry header');
  if (h.every((b) => b === 0)) {
    if (!(await r.restIsZero())) throw new BackupError('ARCHIVE_INVALID', 'backup archive has data after its end marker');
    return undefined;
  }
  const stored = parseOctal(h.subarray(148, 156));
  const copy = Buffer.from(h);
  copy.write('        ', 148, 'ascii');
  let sum = 0;
  for (const b of copy) sum += b;
  if (sum !== stored) throw new BackupError('ARCHIVE_INVALID', 'tar header checksum mismatch');
  if (h[156] !== 0x30 && h[156] !== 0) throw new BackupError('ARCHIVE_INVALID', 'backup archive holds an entry that is not a regular file');
  const name = h.subarray(0, 100).toString('utf8').replace(/\0.*$/s, '');
  return { name, size: parseOctal(h.subarray(124, 136)) };
}

export async function skipPadding(r: ByteReader, size: number): Promise<void> {
  const pad = tarPadding(size).length;
  if (pad) {
    const p = await r.read(pad);
    if (p.length < pad) throw new BackupError('ARCHIVE_TRUNCATED', 'backup archive ends inside entry padding');
  }
}
