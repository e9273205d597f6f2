/**
 * The fuzzer's inputs: a seeded random source, byte mutations with interesting values, and random
 * CBOR-able payload values and maps.
 */
import { MAX_CHUNK_LEN } from '../protocol/constants.js';

// ---- deterministic randomness -------------------------------------------------------------

/** xorshift128+-like 32-bit generator (sfc32), seeded from one integer. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    for (let i = 0; i < 16; i++) this.u32();
  }
  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }
  /** 0 <= n < max */
  int(max: number): number {
    return max <= 1 ? 0 : this.u32() % max;
  }
  chance(p: number): boolean {
    return this.u32() / 4294967296 < p;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n + 3);
    for (let i = 0; i < n; i += 4) b.writeUInt32LE(this.u32(), i);
    return b.subarray(0, n);
  }
  /** A small size with a long tail: mostly < 64, sometimes up to `max`. */
  size(max: number): number {
    const r = this.int(100);
    if (r < 70) return this.int(Math.min(64, max + 1));
    if (r < 95) return this.int(Math.min(4096, max + 1));
    return this.int(max + 1);
  }
}

// ---- mutation -----------------------------------------------------------------------------

const INTERESTING = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1f, 0x40, 0x5f, 0x60, 0x7b, 0x9f, 0xa0, 0xbf, 0xc0, 0xf4, 0xf5, 0xf6, 0xf7, 0xf9, 0xfa, 0xfb, 0xff];

/** One to a few byte-level mutations of `input` (flip, set, insert, delete, truncate, splice, extend). */
export function mutate(rng: Rng, input: Uint8Array): Buffer {
  let b = Buffer.from(input);
  const n = 1 + rng.int(rng.chance(0.2) ? 8 : 3);
  for (let i = 0; i < n; i++) {
    const pos = rng.int(b.length + 1);
    switch (rng.int(8)) {
      case 0:
        if (b.length > 0) b[Math.min(pos, b.length - 1)]! ^= 1 << rng.int(8);
        break;
      case 1:
        if (b.length > 0) b[Math.min(pos, b.length - 1)] = rng.pick(INTERESTING);
        break;
      case 2:
        b = Buffer.concat([b.subarray(0, pos), rng.bytes(1 + rng.int(4)), b.subarray(pos)]);
        break;
      case 3:
        b = Buffer.concat([b.subarray(0, pos), b.subarray(Math.min(b.length, pos + 1 + rng.int(4)))]);
        break;
      case 4:
        b = b.subarray(0, pos);
        break;
      case 5: {
        // Repeat a slice (grows containers' apparent contents).
        const len = rng.int(Math.max(1, b.length - pos));
        b = Buffer.concat([b.subarray(0, pos), b.subarray(pos, pos + len), b.subarray(pos)]);
        break;
      }
      case 6:
        b = Buffer.concat([b, rng.bytes(rng.size(256))]);
        break;
      default:
        if (b.length > 0) b[Math.min(pos, b.length - 1)] = rng.u32() & 0xff;
    }
  }
  return b;
}

// ---- random CBOR values -------------------------------------------------------------------

const KEYS = ['id', 'club', 'user', 'password', 'data', 'name', 'fields', 'filters', 'sort', 'limit', 'offset', 'field', 'op', 'value', 'dir', 'record', 'userId', 'role', 'registers', 'grants', 'area', 'actions', 'scope', 'kind', 'username', 'displayName', 'admin', 'emails', 'entity', 'from', 'to', 'since', 'until', 'format', 'docId', 'title', 'personId', 'reason', 'changes', '__proto__', 'constructor', ''];

const TEXTS = ['', 'a', 'admin', 'ping', 'club', 'eq', 'asc', 'desc', 'registers', 'own', 'read', 'write', '0', '-1', 'ä', '\u0000', '\u202e', 'x'.repeat(300), '💥'];

export function randomValue(rng: Rng, depth = 0): unknown {
  const r = rng.int(depth > 3 ? 7 : 10);
  switch (r) {
    case 0:
      return rng.pick([0, 1, -1, 23, 24, 255, 256, 65535, 65536, 2 ** 31, 2 ** 32, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER, 1.5, -0.25]);
    case 1:
      return rng.int(1000);
    case 2:
      return rng.pick(TEXTS);
    case 3:
      return rng.bytes(rng.size(MAX_CHUNK_LEN + 16));
    case 4:
      return rng.pick([true, false, null]);
    case 5:
      return rng.bytes(rng.int(8)).toString('hex');
    case 6:
      return new Uint8Array(0);
    case 7: {
      const n = rng.size(40);
      const a: unknown[] = [];
      for (let i = 0; i < n; i++) a.push(randomValue(rng, depth + 1));
      return a;
    }
    default:
      return randomMap(rng, depth + 1);
  }
}

export function randomMap(rng: Rng, depth = 0): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  const n = rng.int(6);
  for (let i = 0; i < n; i++) {
    const k = rng.chance(0.85) ? rng.pick(KEYS) : rng.bytes(1 + rng.int(6)).toString('hex');
    if (k === '__proto__') continue; // the encoder would drop it; the mutators cover the raw bytes
    o[k] = randomValue(rng, depth + 1);
  }
  return o;
}
