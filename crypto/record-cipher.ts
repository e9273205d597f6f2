import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject } from 'node:crypto';
import { createRequire } from 'node:module';
import { AEAD_IV_LEN, AEAD_KEY_LEN, AEAD_TAG_LEN } from './handshake-crypto.js';

/**
 * AES-256-GCM for the record layer of the client protocol, one object per direction and key
 * (docs/PROTOCOL.md "Records"): the nonce of record n is the direction's IV XOR n (64-bit
 * big-endian, right-aligned), and n is counted here, beside the key. Every seal, and every open
 * that verifies, uses the next n; nothing lets a caller pick a nonce, so no call can repeat one
 * under the same key. An open that fails leaves the counter where it was and no plaintext in
 * the output.
 *
 * Two implementations with byte-identical output (tests/record-cipher.test.ts checks both
 * against the protocol vectors and against each other on random inputs):
 * - `native`: the addon crypto/native/record_aead.c, built by `npm ci` (binding.gyp) against the
 *   OpenSSL inside node. No cipher lookup per record (OpenSSL 3 looks the cipher up by name on
 *   every createCipheriv: a hash table, a string compare, a lock); sealing and opening a 64-byte
 *   record costs about 0.8 us against 7 us through node:crypto.
 * - `node`: node:crypto, the reference, used when the addon cannot be loaded.
 *
 * Missing addon: fall back to node:crypto, and say so once (recordCipherBackend() gives the
 * reason; commusicd logs it at start). Falling back, not failing closed, because the two produce
 * the same bytes: what is lost is speed (about 3 us more per record on each side), not confidentiality or
 * integrity, and the SDK (client/) runs the same record layer on machines that may have no
 * compiler. An addon that loads but answers differently from node:crypto on a fixed record (the
 * self test when this module loads) is not used either: the fallback covers that case too.
 */
export interface RecordCipher {
  /** The record number the next seal or successful open uses (0 for a fresh key). */
  readonly sequence: number;
  /**
   * Seals `head` followed by `tail` (when given) as one plaintext under the next record number,
   * with `aad` as associated data, writing ciphertext then the 16-byte tag at out[offset..].
   * Returns the bytes written (plaintext length + 16). Throws RangeError when `out` is too small
   * or the cipher is for opening or destroyed.
   */
  seal(aad: Uint8Array, head: Uint8Array, tail: Uint8Array | undefined, out: Uint8Array, offset: number): number;
  /**
   * Opens `sealed` (ciphertext || tag) under the next record number into out[offset..] (which may
   * be `sealed` itself: in place). Returns the plaintext length, or -1 when the tag does not
   * verify (the counter stays, the output range is zeroed). Throws RangeError as seal() does.
   */
  open(aad: Uint8Array, sealed: Uint8Array, out: Uint8Array, offset: number): number;
  /**
   * Opens in place, without view objects: the associated data is buf[at, at + aadLen), the
   * sealed bytes (ciphertext || tag, `sealedLen` bytes) follow it, and the plaintext replaces the
   * ciphertext at buf[at + aadLen..]. Returns the plaintext length, or -1 as open() does (the
   * range is zeroed then). Throws RangeError when the range lies outside `buf`.
   */
  openAt(buf: Uint8Array, at: number, aadLen: number, sealedLen: number): number;
  /**
   * Seals with rec[0, aadLen) as associated data, writing ciphertext then tag at rec[aadLen..]
   * (the record's header is its associated data, so no view of it is made). Returns the bytes
   * written, as seal() does.
   */
  sealAt(rec: Uint8Array, aadLen: number, head: Uint8Array, tail: Uint8Array | undefined): number;
  /** Wipes key and IV now (also done when the object is collected); later calls throw. */
  destroy(): void;
}

export type RecordCipherRole = 'seal' | 'open';
export type RecordCipherImpl = 'native' | 'node';

interface NativeAead {
  create(key: Uint8Array, iv: Uint8Array, encrypt: boolean): object;
  seal(dir: object, aad: Uint8Array, head: Uint8Array, tail: Uint8Array | undefined, out: Uint8Array, offset: number): number;
  open(dir: object, aad: Uint8Array, sealed: Uint8Array, out: Uint8Array, offset: number): number;
  openAt(dir: object, buf: Uint8Array, at: number, aadLen: number, sealedLen: number): number;
  sealAt(dir: object, rec: Uint8Array, aadLen: number, head: Uint8Array, tail: Uint8Array | undefined): number;
  sequence(dir: object): number;
  destroy(dir: object): void;
}

/** Path of the built addon, relative to this file in dist/crypto/. */
const ADDON = '../../build/Release/record_aead.node';

let nativeAead: NativeAead | undefined;
let loadError: string | undefined;

/**
 * Which implementation createRecordCipher() uses by default, and why: `{ impl: 'native' }`, or
 * `{ impl: 'node', reason }` when the addon could not be loaded (`reason` is the loader's first
 * line, a path and an errno, nothing secret).
 */
export function recordCipherBackend(): { impl: RecordCipherImpl; reason?: string } {
  return nativeAead ? { impl: 'native' } : { impl: 'node', reason: loadError ?? 'not loaded' };
}

/**
 * A record cipher for one direction: `key` 32 bytes (AES-256), `iv` 12 bytes, both copied (the
 * caller wipes its own). `impl` defaults to the native addon when it loaded (see above).
 */
export function createRecordCipher(key: Uint8Array, iv: Uint8Array, role: RecordCipherRole, impl?: RecordCipherImpl): RecordCipher {
  if (key.length !== AEAD_KEY_LEN) throw new RangeError('AES-256 keys are 32 bytes');
  if (iv.length !== AEAD_IV_LEN) throw new RangeError('record IVs are 12 bytes');
  const use = impl ?? (nativeAead ? 'native' : 'node');
  if (use === 'native') {
    if (!nativeAead) throw new Error(`record AEAD addon not available: ${loadError ?? 'not loaded'}`);
    return new NativeRecordCipher(nativeAead, nativeAead.create(key, iv, role === 'seal'));
  }
  return new NodeRecordCipher(createSecretKey(key), iv, role);
}

class NativeRecordCipher implements RecordCipher {
  constructor(
    private readonly lib: NativeAead,
    private readonly dir: object,
  ) {}

  get sequence(): number {
    return this.lib.sequence(this.dir);
  }

  seal(aad: Uint8Array, head: Uint8Array, tail: Uint8Array | undefined, out: Uint8Array, offset: number): number {
    return this.lib.seal(this.dir, aad, head, tail, out, offset);
  }

  open(aad: Uint8Array, sealed: Uint8Array, out: Uint8Array, offset: number): number {
    return this.lib.open(this.dir, aad, sealed, out, offset);
  }

  openAt(buf: Uint8Array, at: number, aadLen: number, sealedLen: number): number {
    return this.lib.openAt(this.dir, buf, at, aadLen, sealedLen);
  }

  sealAt(rec: Uint8Array, aadLen: number, head: Uint8Array, tail: Uint8Array | undefined): number {
    return this.lib.sealAt(this.dir, rec, aadLen, head, tail);
  }

  destroy(): void {
    this.lib.destroy(this.dir);
  }
}

/** Records per key this side refuses to pass (the native addon's limit; the protocol rekeys far earlier). */
const MAX_RECORDS = 2 ** 40;

/** The reference: node:crypto, one cipher object per record. */
class NodeRecordCipher implements RecordCipher {
  private seq = 0;
  private live = true;
  private readonly iv: Buffer;
  private readonly nonce = Buffer.alloc(AEAD_IV_LEN);

  constructor(
    private readonly key: KeyObject,
    iv: Uint8Array,
    private readonly role: RecordCipherRole,
  ) {
    this.iv = Buffer.from(iv);
  }

  get sequence(): number {
    return this.seq;
  }

  seal(aad: Uint8Array, head: Uint8Array, tail: Uint8Array | undefined, out: Uint8Array, offset: number): number {
    this.check('seal');
    const len = head.length + (tail ? tail.length : 0);
    if (offset < 0 || out.length - offset < len + AEAD_TAG_LEN) throw new RangeError('output buffer too small');
    const c = createCipheriv('aes-256-gcm', this.key, this.nextNonce());
    c.setAAD(aad);
    let at = offset;
    const a = c.update(head);
    out.set(a, at);
    at += a.length;
    if (tail && tail.length > 0) {
      const b = c.update(tail);
      out.set(b, at);
      at += b.length;
    }
    c.final();
    out.set(c.getAuthTag(), at);
    this.seq++;
    return len + AEAD_TAG_LEN;
  }

  open(aad: Uint8Array, sealed: Uint8Array, out: Uint8Array, offset: number): number {
    this.check('open');
    if (sealed.length < AEAD_TAG_LEN) return -1;
    const len = sealed.length - AEAD_TAG_LEN;
    if (offset < 0 || out.length - offset < len) throw new RangeError('output buffer too small');
    const d = createDecipheriv('aes-256-gcm', this.key, this.nextNonce());
    d.setAAD(aad);
    d.setAuthTag(sealed.subarray(len));
    const body = d.update(sealed.subarray(0, len));
    try {
      d.final();
    } catch {
      body.fill(0);
      out.fill(0, offset, offset + len);
      return -1;
    }
    out.set(body, offset);
    body.fill(0);
    this.seq++;
    return len;
  }

  openAt(buf: Uint8Array, at: number, aadLen: number, sealedLen: number): number {
    if (at < 0 || aadLen < 0 || sealedLen < 0 || at + aadLen + sealedLen > buf.length) throw new RangeError('range outside the buffer');
    const from = at + aadLen;
    return this.open(buf.subarray(at, from), buf.subarray(from, from + sealedLen), buf, from);
  }

  sealAt(rec: Uint8Array, aadLen: number, head: Uint8Array, tail: Uint8Array | undefined): number {
    if (aadLen < 0 || aadLen > rec.length) throw new RangeError('bad aadLen');
    return this.seal(rec.subarray(0, aadLen), head, tail, rec, aadLen);
  }

  destroy(): void {
    this.live = false;
    this.iv.fill(0);
  }

  private check(role: RecordCipherRole): void {
    if (!this.live || this.role !== role) throw new RangeError(`not a live ${role === 'seal' ? 'sealing' : 'opening'} cipher`);
    if (this.seq >= MAX_RECORDS) throw new RangeError('record counter exhausted for this key');
  }

  private nextNonce(): Buffer {
    const n = this.nonce;
    this.iv.copy(n);
    // seq < 2^40: the upper bytes of the 64-bit counter come from the high part.
    const hi = Math.floor(this.seq / 2 ** 32);
    n.writeUInt32BE((n.readUInt32BE(4) ^ hi) >>> 0, 4);
    n.writeUInt32BE((n.readUInt32BE(8) ^ this.seq) >>> 0, 8);
    return n;
  }
}

/**
 * Seals and opens one fixed record with the addon and compares it byte for byte with node:crypto;
 * throws when they differ (an addon built wrong must never talk to clients).
 */
function selfTest(lib: NativeAead): void {
  const key = Buffer.alloc(AEAD_KEY_LEN, 7);
  const iv = Buffer.alloc(AEAD_IV_LEN, 9);
  const aad = Buffer.from([23, 0, 0, 0, 48]);
  const pt = Buffer.from('ComMusic record AEAD self test!!', 'ascii');
  const a = Buffer.alloc(pt.length + AEAD_TAG_LEN);
  const b = Buffer.alloc(pt.length + AEAD_TAG_LEN);
  const back = Buffer.alloc(pt.length);
  const n = new NativeRecordCipher(lib, lib.create(key, iv, true));
  const o = new NativeRecordCipher(lib, lib.create(key, iv, false));
  const r = new NodeRecordCipher(createSecretKey(key), iv, 'seal');
  n.seal(aad, pt, undefined, a, 0);
  r.seal(aad, pt, undefined, b, 0);
  // The in-place forms on the next record number: header || ciphertext || tag in one buffer.
  const rec = Buffer.alloc(aad.length + pt.length + AEAD_TAG_LEN);
  aad.copy(rec);
  n.sealAt(rec, aad.length, pt, undefined);
  const ref = Buffer.alloc(pt.length + AEAD_TAG_LEN);
  r.seal(aad, pt, undefined, ref, 0);
  const ok =
    a.equals(b) &&
    rec.subarray(aad.length).equals(ref) &&
    o.open(aad, a, back, 0) === pt.length &&
    back.equals(pt) &&
    o.openAt(rec, 0, aad.length, rec.length - aad.length) === pt.length &&
    rec.subarray(aad.length, aad.length + pt.length).equals(pt);
  n.destroy();
  o.destroy();
  r.destroy();
  if (!ok) throw new Error('the record AEAD addon disagrees with node:crypto');
}

/** `COMMUSIC_RECORD_CIPHER=node` in the environment: use node:crypto even when the addon is built. */
export const RECORD_CIPHER_ENV = 'COMMUSIC_RECORD_CIPHER';

if (process.env[RECORD_CIPHER_ENV] === 'node') {
  loadError = `${RECORD_CIPHER_ENV}=node`;
} else {
  try {
    const lib = createRequire(import.meta.url)(ADDON) as NativeAead;
    selfTest(lib);
    nativeAead = lib;
  } catch (e) {
    loadError = (e as Error).message.split('\n')[0];
  }
}
