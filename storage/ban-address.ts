import { isIPv6 } from 'node:net';

/**
 * Addresses and prefixes for the ban table, in a form that makes `check()` at accept time cheap:
 * an IPv4 address is one unsigned 32-bit number, an IPv6 address one bigint, and an IPv4-mapped
 * IPv6 address (`::ffff:1.2.3.4`, what a dual-stack socket reports) is the IPv4 address, so a ban
 * on 1.2.3.4 holds whichever way the peer arrives.
 */
export type ParsedAddress =
  | { readonly family: 4; readonly value: number }
  | { readonly family: 6; readonly value: bigint };

/** A network: the address with its host bits cleared, and the prefix length. */
export type ParsedPrefix =
  | { readonly family: 4; readonly value: number; readonly length: number }
  | { readonly family: 6; readonly value: bigint; readonly length: number };

export const IPV4_BITS = 32;
export const IPV6_BITS = 128;
const MAPPED_V4_PREFIX = 0xffffn; // ::ffff:0:0/96
const MAPPED_V4_LENGTH = 96;

export class BanAddressError extends Error {
  readonly code = 'BAN_BAD_ADDRESS';
  constructor(readonly input: string) {
    super(`not an IP address or CIDR range: ${JSON.stringify(input.slice(0, 60))}`);
    this.name = 'BanAddressError';
  }
}

const V4_MASKS: number[] = Array.from({ length: IPV4_BITS + 1 }, (_, len) =>
  len === 0 ? 0 : (0xffffffff << (IPV4_BITS - len)) >>> 0,
);
const V6_ALL = (1n << 128n) - 1n;
const V6_MASKS: bigint[] = Array.from({ length: IPV6_BITS + 1 }, (_, len) =>
  len === 0 ? 0n : (V6_ALL << BigInt(IPV6_BITS - len)) & V6_ALL,
);

/** Dotted quad to an unsigned 32-bit number, or -1. Strict: four decimal octets, no leading zeros. */
export function parseIPv4(s: string): number {
  let value = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 46 /* . */) {
      if (digits === 0 || dots === 3) return -1;
      value = value * 256 + octet;
      octet = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && octet === 0) return -1; // leading zero: octal ambiguity
      octet = octet * 10 + (c - 48);
      if (octet > 255) return -1;
      digits++;
    } else {
      return -1;
    }
  }
  if (dots !== 3 || digits === 0) return -1;
  return value * 256 + octet;
}

function parseIPv6(input: string): bigint | undefined {
  let s = input;
  const zone = s.indexOf('%');
  if (zone >= 0) s = s.slice(0, zone);
  if (!isIPv6(s)) return undefined;
  const lastColon = s.lastIndexOf(':');
  const last = s.slice(lastColon + 1);
  if (last.includes('.')) {
    const v4 = parseIPv4(last);
    if (v4 < 0) return undefined;
    s = `${s.slice(0, lastColon + 1)}${(v4 >>> 16).toString(16)}:${(v4 & 0xffff).toString(16)}`;
  }
  let groups: string[];
  const dbl = s.indexOf('::');
  if (dbl >= 0) {
    const head = dbl > 0 ? s.slice(0, dbl).split(':') : [];
    const tail = dbl + 2 < s.length ? s.slice(dbl + 2).split(':') : [];
    const fill = 8 - head.length - tail.length;
    if (fill < 0) return undefined;
    groups = [...head, ...Array<string>(fill).fill('0'), ...tail];
  } else {
    groups = s.split(':');
  }
  if (groups.length !== 8) return undefined;
  let value = 0n;
  for (const g of groups) {
    const n = Number.parseInt(g, 16);
    if (!(n >= 0 && n <= 0xffff)) return undefined;
    value = (value << 16n) | BigInt(n);
  }
  return value;
}

/** Parse a socket address. IPv4-mapped IPv6 becomes IPv4. Undefined for anything else. */
export function parseAddress(text: string): ParsedAddress | undefined {
  let s = text;
  if (s.startsWith('[') && s.endsWith(']')) s = s.slice(1, -1);
  const v4 = parseIPv4(s);
  if (v4 >= 0) return { family: 4, value: v4 };
  const v6 = parseIPv6(s);
  if (v6 === undefined) return undefined;
  if (v6 >> 32n === MAPPED_V4_PREFIX) return { family: 4, value: Number(v6 & 0xffffffffn) };
  return { family: 6, value: v6 };
}

/** The prefix of the given length that contains the address. */
export function prefixOf(addr: ParsedAddress, length: number): ParsedPrefix {
  if (addr.family === 4) {
    const len = Math.max(0, Math.min(IPV4_BITS, length));
    return { family: 4, value: (addr.value & V4_MASKS[len]!) >>> 0, length: len };
  }
  const len = Math.max(0, Math.min(IPV6_BITS, length));
  return { family: 6, value: addr.value & V6_MASKS[len]!, length: len };
}

/**
 * Parse "1.2.3.4", "10.0.0.0/8", "2001:db8::1", "2001:db8::/32" (host bits are cleared, so
 * "10.1.2.3/8" means 10.0.0.0/8). An IPv4-mapped IPv6 range of length >= 96 becomes the IPv4
 * range. Throws BanAddressError on anything else.
 */
export function parsePrefix(text: string): ParsedPrefix {
  const s = text.trim();
  const slash = s.indexOf('/');
  const addrText = slash >= 0 ? s.slice(0, slash) : s;
  const lenText = slash >= 0 ? s.slice(slash + 1) : undefined;
  let len: number | undefined;
  if (lenText !== undefined) {
    if (!/^\d{1,3}$/.test(lenText)) throw new BanAddressError(text);
    len = Number(lenText);
  }
  const v4 = parseIPv4(addrText);
  if (v4 >= 0) {
    const l = len ?? IPV4_BITS;
    if (l > IPV4_BITS) throw new BanAddressError(text);
    return prefixOf({ family: 4, value: v4 }, l);
  }
  const v6 = addrText.includes('%') ? undefined : parseIPv6(addrText);
  if (v6 === undefined) throw new BanAddressError(text);
  const l = len ?? IPV6_BITS;
  if (l > IPV6_BITS) throw new BanAddressError(text);
  if (v6 >> 32n === MAPPED_V4_PREFIX && l >= MAPPED_V4_LENGTH) {
    return prefixOf({ family: 4, value: Number(v6 & 0xffffffffn) }, l - MAPPED_V4_LENGTH);
  }
  return prefixOf({ family: 6, value: v6 }, l);
}

export function formatIPv4(v: number): string {
  return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

/** RFC 5952 text: lower case, longest run of two or more zero groups as "::". */
export function formatIPv6(v: bigint): string {
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((v >> BigInt(i * 16)) & 0xffffn));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  const head = hex.slice(0, bestStart).join(':');
  const tail = hex.slice(bestStart + bestLen).join(':');
  return `${head}::${tail}`;
}

/** Canonical text: a single address without "/32" or "/128", a range as "net/len". */
export function formatPrefix(p: ParsedPrefix): string {
  if (p.family === 4) {
    const a = formatIPv4(p.value);
    return p.length === IPV4_BITS ? a : `${a}/${p.length}`;
  }
  const a = formatIPv6(p.value);
  return p.length === IPV6_BITS ? a : `${a}/${p.length}`;
}

export function formatAddress(a: ParsedAddress): string {
  return a.family === 4 ? formatIPv4(a.value) : formatIPv6(a.value);
}

/** Canonical form of an address or CIDR range given by an operator or stored in the table. */
export function canonicalPrefix(text: string): string {
  return formatPrefix(parsePrefix(text));
}

/**
 * Longest-prefix lookup: one hash map per prefix length in use, probed from the longest length
 * down. A lookup costs one map probe per distinct length present (at most 33 for IPv4), whatever
 * the number of entries, and is synchronous, so the listener can call it before any crypto.
 */
export class PrefixMap<T> {
  private readonly v4 = new Map<number, Map<number, T>>();
  private readonly v6 = new Map<number, Map<bigint, T>>();
  private v4Lengths: number[] = [];
  private v6Lengths: number[] = [];
  private count = 0;

  get size(): number {
    return this.count;
  }

  set(p: ParsedPrefix, value: T): void {
    if (p.family === 4) {
      let m = this.v4.get(p.length);
      if (!m) {
        m = new Map();
        this.v4.set(p.length, m);
        this.v4Lengths = [...this.v4.keys()].sort((a, b) => b - a);
      }
      if (!m.has(p.value)) this.count++;
      m.set(p.value, value);
    } else {
      let m = this.v6.get(p.length);
      if (!m) {
        m = new Map();
        this.v6.set(p.length, m);
        this.v6Lengths = [...this.v6.keys()].sort((a, b) => b - a);
      }
      if (!m.has(p.value)) this.count++;
      m.set(p.value, value);
    }
  }

  get(p: ParsedPrefix): T | undefined {
    return p.family === 4 ? this.v4.get(p.length)?.get(p.value) : this.v6.get(p.length)?.get(p.value);
  }

  delete(p: ParsedPrefix): boolean {
    if (p.family === 4) {
      const m = this.v4.get(p.length);
      if (!m?.delete(p.value)) return false;
      if (m.size === 0) {
        this.v4.delete(p.length);
        this.v4Lengths = this.v4Lengths.filter((l) => l !== p.length);
      }
    } else {
      const m = this.v6.get(p.length);
      if (!m?.delete(p.value)) return false;
      if (m.size === 0) {
        this.v6.delete(p.length);
        this.v6Lengths = this.v6Lengths.filter((l) => l !== p.length);
      }
    }
    this.count--;
    return true;
  }

  clear(): void {
    this.v4.clear();
    this.v6.clear();
    this.v4Lengths = [];
    this.v6Lengths = [];
    this.count = 0;
  }

  /** The most specific entry containing the address for which `accept` holds. */
  match(a: ParsedAddress, accept?: (value: T) => boolean): T | undefined {
    if (a.family === 4) {
      for (const len of this.v4Lengths) {
        const v = this.v4.get(len)!.get((a.value & V4_MASKS[len]!) >>> 0);
        if (v !== undefined && (!accept || accept(v))) return v;
      }
      return undefined;
    }
    for (const len of this.v6Lengths) {
      const v = this.v6.get(len)!.get(a.value & V6_MASKS[len]!);
      if (v !== undefined && (!accept || accept(v))) return v;
    }
    return undefined;
  }

  *values(): IterableIterator<T> {
    for (const m of this.v4.values()) yield* m.values();
    for (const m of this.v6.values()) yield* m.values();
  }
}
