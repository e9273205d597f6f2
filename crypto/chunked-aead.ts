/**
 * Streamed, chunked AES-256-GCM for files (documents now, backups later): the "STREAM"
 * construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015). Data is cut into chunks; each chunk
 * is sealed on its own with a nonce made of a per-file prefix, the chunk index and a final-chunk
 * flag, and the AAD is the file header. Hence:
 *   - tampering with a chunk or the header fails that chunk's tag;
 *   - reordering or dropping chunks inside the file changes indexes: tag failure;
 *   - truncation at a chunk boundary makes a non-final chunk the last one: tag failure
 *     (or STREAM_TRUNCATED when not even one chunk is left);
 *   - chunks swapped in from another file fail: every file has its own random salt, hence its
 *     own derived key and nonce prefix.
 * Neither side holds more than about two chunks in memory.
 *
 * File format, version 1:
 *   offset len  field
 *   0      4    magic "CMEF"
 *   4      1    version = 1
 *   5      1    log2(chunk size), 12..24 (default 18: 256 KiB)
 *   6      2    reserved, 0
 *   8      8    key id of the file key (public: keyIdOf(key)); tells "wrong key" from "damaged"
 *   16     32   random salt
 *   48     ...  chunks: ciphertext (chunk size bytes, the final one 0..chunk size) + 16-byte tag
 * Per file: subkey = HKDF-SHA256(key, salt, "commusic/chunked-aead/v1/key"), nonce prefix (7 bytes)
 * = HKDF-SHA256(key, salt, "commusic/chunked-aead/v1/nonce"). Nonce of chunk i =
 * prefix || uint32be(i) || (final ? 1 : 0). AAD = the 48 header bytes.
 * The final chunk is always present (an empty input gives one empty final chunk) and is the only
 * chunk that may be shorter than the chunk size.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { CryptoError } from './errors.js';
import { keyIdOf } from './master-key.js';

export const STREAM_MAGIC = Buffer.from('CMEF', 'ascii');
export const STREAM_VERSION = 1;
export const STREAM_HEADER_LEN = 48;
export const STREAM_TAG_LEN = 16;
export const DEFAULT_CHUNK_LOG2 = 18;
export const MIN_CHUNK_LOG2 = 12;
export const MAX_CHUNK_LOG2 = 24;
const MAX_CHUNKS = 2 ** 32 - 1;
/** Stream buffer (both sides of the transforms): a few chunks, so a 64 KiB chunk never stalls. */
const STREAM_BUFFER = 1 << 20;

interface Derived {
  key: Buffer;
  prefix: Buffer;
}

function derive(key: Buffer, salt: Buffer): Derived {
  return {
    key: Buffer.from(hkdfSync('sha256', key, salt, 'commusic/chunked-aead/v1/key', 32)),
    prefix: Buffer.from(hkdfSync('sha256', key, salt, 'commusic/chunked-aead/v1/nonce', 7)),
  };
}

function nonceFor(prefix: Buffer, index: number, final: boolean): Buffer {
  const n = Buffer.alloc(12);
  prefix.copy(n, 0);
  n.writeUInt32BE(index, 7);
  n[11] = final ? 1 : 0;
  return n;
}

/** Concatenate a list of buffers lazily: only the bytes asked for are copied. */
class ByteQueue {
  #bufs: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    if (b.length) {
      this.#bufs.push(b);
      this.length += b.length;
    }
  }
  take(n: number): Buffer {
    const first = this.#bufs[0];
    if (first && first.length >= n) {
      // The common case (source chunks larger than a cipher chunk): a view, no copy.
      this.#bufs[0] = first.subarray(n);
      if (this.#bufs[0].length === 0) this.#bufs.shift();
      this.length -= n;
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const head = this.#bufs[0]!;
      const k = Math.min(head.length, n - off);
      head.copy(out, off, 0, k);
      off += k;
      if (k === head.length) this.#bufs.shift();
      else this.#bufs[0] = head.subarray(k);
    }
    this.length -= n;
    return out;
  }
}

export interface EncryptOptions {
  chunkLog2?: number;
}

/** A Transform: plaintext in, encrypted file bytes out (header first). */
export function createEncryptStream(key: Buffer, opts: EncryptOptions = {}): Transform {
  if (key.length !== 32) throw new CryptoError('BAD_KEY_LENGTH', 'stream key must be 32 bytes');
  const log2 = opts.chunkLog2 ?? DEFAULT_CHUNK_LOG2;
  if (!Number.isInteger(log2) || log2 < MIN_CHUNK_LOG2 || log2 > MAX_CHUNK_LOG2) throw new CryptoError('STREAM_HEADER_INVALID', `chunk size log2 must be ${MIN_CHUNK_LOG2}..${MAX_CHUNK_LOG2}`);
  const chunkSize = 2 ** log2;
  const header = Buffer.alloc(STREAM_HEADER_LEN);
  STREAM_MAGIC.copy(header, 0);
  header[4] = STREAM_VERSION;
  header[5] = log2;
  keyIdOf(key).copy(header, 8);
  randomBytes(32).copy(header, 16);
  const d = derive(key, header.subarray(16, 48));
  const q = new ByteQueue();
  let index = 0;
  let headerSent = false;
  const seal = (pt: Buffer, final: boolean): [Buffer, Buffer] => {
    if (index > MAX_CHUNKS) throw new CryptoError('STREAM_CORRUPT', 'stream too long for one key');
    const c = createCipheriv('aes-256-gcm', d.key, nonceFor(d.prefix, index++, final));
    c.setAAD(header);
    const ct = c.update(pt);
    c.final();
    return [ct, c.getAuthTag()];
  };
  return new Transform({
    highWaterMark: STREAM_BUFFER,
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      try {
        if (!headerSent) {
          this.push(header);
          headerSent = true;
        }
        q.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
        // Only seal a chunk as non-final when we know more bytes follow it.
        while (q.length > chunkSize) for (const b of seal(q.take(chunkSize), false)) this.push(b);
        cb();
      } catch (e) {
        cb(e as Error);
      }
    },
    flush(cb: TransformCallback) {
      try {
        if (!headerSent) this.push(header);
        for (const b of seal(q.take(q.length), true)) this.push(b);
        d.key.fill(0);
        cb();
      } catch (e) {
        cb(e as Error);
      }
    },
  });
}

/** Parse and check a stream header; returns chunk size. */
export function parseStreamHeader(header: Buffer, key: Buffer): { chunkSize: number } {
  if (header.length < STREAM_HEADER_LEN || !header.subarray(0, 4).equals(STREAM_MAGIC)) {
    throw new CryptoError('STREAM_HEADER_INVALID', 'not a ComMusic encrypted file (bad magic)');
  }
  if (header[4] !== STREAM_VERSION) throw new CryptoError('STREAM_HEADER_INVALID', `encrypted file version ${header[4]} is not supported`);
  const log2 = header[5]!;
  if (log2 < MIN_CHUNK_LOG2 || log2 > MAX_CHUNK_LOG2 || header[6] !== 0 || header[7] !== 0) {
    throw new CryptoError('STREAM_HEADER_INVALID', 'encrypted file header is damaged');
  }
  if (!keyIdOf(key).equals(header.subarray(8, 16))) {
    throw new CryptoError('WRONG_KEY', 'encrypted file was written under another key (key id mismatch)');
  }
  return { chunkSize: 2 ** log2 };
}

/**
 * A Transform: encrypted file bytes in, plaintext out. Each chunk is authenticated before any of
 * its plaintext is pushed; a truncated file fails at the end (the consumer must treat the data
 * as valid only when the stream ends without error).
 */
export function createDecryptStream(fileKey: Buffer): Transform {
  if (fileKey.length !== 32) throw new CryptoError('BAD_KEY_LENGTH', 'stream key must be 32 bytes');
  const key = Buffer.from(fileKey); // the caller may zero its copy at once
  const q = new ByteQueue();
  let header: Buffer | undefined;
  let d: Derived | undefined;
  let record = 0;
  let index = 0;
  const open = (rec: Buffer, final: boolean): Buffer => {
    if (index > MAX_CHUNKS) throw new CryptoError('STREAM_CORRUPT', 'stream too long');
    const dc = createDecipheriv('aes-256-gcm', d!.key, nonceFor(d!.prefix, index, final));
    dc.setAAD(header!);
    dc.setAuthTag(rec.subarray(rec.length - STREAM_TAG_LEN));
    try {
      const pt = dc.update(rec.subarray(0, rec.length - STREAM_TAG_LEN));
      dc.final();
      index++;
      return pt;
    } catch {
      throw new CryptoError('STREAM_CORRUPT', `encrypted file chunk ${index} failed authentication (tampered, reordered, swapped or truncated)`);
    }
  };
  return new Transform({
    highWaterMark: STREAM_BUFFER,
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      try {
        q.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
        if (!header) {
          if (q.length < STREAM_HEADER_LEN) return cb();
          header = q.take(STREAM_HEADER_LEN);
          const { chunkSize } = parseStreamHeader(header, key);
          d = derive(key, header.subarray(16, 48));
          key.fill(0);
          record = chunkSize + STREAM_TAG_LEN;
        }
        while (q.length > record) this.push(open(q.take(record), false));
        cb();
      } catch (e) {
        cb(e as Error);
      }
    },
    flush(cb: TransformCallback) {
      try {
        if (!header) throw new CryptoError('STREAM_TRUNCATED', 'encrypted file is truncated (no complete header)');
        if (q.length < STREAM_TAG_LEN) throw new CryptoError('STREAM_TRUNCATED', 'encrypted file is truncated (final chunk missing)');
        this.push(open(q.take(q.length), true));
        d!.key.fill(0);
        cb();
      } catch (e) {
        cb(e as Error);
      }
    },
  });
}

/** Convenience for small buffers (tests, wrapped blobs): whole-buffer encrypt. */
export async function encryptBuffer(key: Buffer, data: Buffer, opts: EncryptOptions = {}): Promise<Buffer> {
  return collect(createEncryptStream(key, opts), data);
}

export async function decryptBuffer(key: Buffer, data: Buffer): Promise<Buffer> {
  return collect(createDecryptStream(key), data);
}

function collect(t: Transform, input: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const out: Buffer[] = [];
    t.on('data', (b: Buffer) => out.push(b));
    t.on('error', reject);
    t.on('end', () => resolve(Buffer.concat(out)));
    t.end(input);
  });
}
