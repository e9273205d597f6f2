import ipaddr from 'ipaddr.js';

/**
 * Addresses and prefixes for the ban table, the exempt lists and the health endpoint's allow
 * list: the one place in the product where address text is parsed, and the parsing itself is
 * done by ipaddr.js (a well-kept library), so no two parsers can disagree about what an address
 * or a range is. The parsed form makes `check()` at accept time cheap: an IPv4 address is one
 * unsigned 32-bit number, an IPv6 address one bigint, and an IPv4-mapped IPv6 address
 * (`::ffff:1.2.3.4`, what a dual-stack socket reports) is the IPv4 address, so a ban on 1.2.3.4
 * holds whichever way the peer arrives.
 *
 * Accepted text: IPv4 only as four decimal octets without leading zeros (no `127.1`, `0x7f.0.0.1`
 * or `010.0.0.1`, which other parsers read differently); IPv6 in any RFC 4291 form, an interface
 * zone (`%eth0`) dropped for socket addresses; `[...]` brackets around a socket address.
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
const MAPPED_V4_LENGTH = 96;

export type BanAddressErrorCode = 'BAN_BAD_ADDRESS' | 'BAN_HOST_BITS';

/** Bad address text. `BAN_HOST_BITS`: a range written with host bits set (`10.0.0.1/8`). */
export class BanAddressError extends Error {
  constructor(
    readonly input: string,
    readonly code: BanAddressErrorCode = 'BAN_BAD_ADDRESS',
    message?: string,
  ) {
    super(message ?? `not an IP address or CIDR range: ${JSON.stringify(input.slice(0, 60))}`);
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

function v4Value(a: ipaddr.IPv4): number {
  const o = a.octets;
  return ((o[0]! << 24) | (o[1]! << 16) | (o[2]! << 8) | o[3]!) >>> 0;
}

function v6Value(a: ipaddr.IPv6): bigint {
  let v = 0n;
  for (const p of a.parts) v = (v << 16n) | BigInt(p);
  return v;
}

/** The library's address, or undefined; IPv4 only in strict four-part decimal form. */
function parseLib(text: string): ipaddr.IPv4 | ipaddr.IPv6 | undefined {
  if (text.length === 0 || text.length > 64) return undefined;
  if (ipaddr.IPv4.isValidFourPartDecimal(text)) return ipaddr.IPv4.parse(text);
  if (!text.includes(':') || !ipaddr.IPv6.isValid(text)) return undefined;
  const a = ipaddr.IPv6.parse(text);
  // An embedded IPv4 tail must be strict too (no "::ffff:127.1").
  const tail = text.slice(text.lastIndexOf(':') + 1).split('%')[0]!;
  if (tail.includes('.') && !ipaddr.IPv4.isValidFourPartDecimal(tail)) return undefined;
  return a;
}

/** Dotted quad to an unsigned 32-bit number, or -1 (strict four-part decimal). */
export function parseIPv4(s: string): number {
  return ipaddr.IPv4.isValidFourPartDecimal(s) ? v4Value(ipaddr.IPv4.parse(s)) : -1;
}

/** Parse a socket address. IPv4-mapped IPv6 becomes IPv4. Undefined for anything else. */
export function parseAddress(text: string): ParsedAddress | undefined {
  let s = text;
  if (s.startsWith('[') && s.endsWith(']')) s = s.slice(1, -1);
  const a = parseLib(s);
  if (!a) return undefined;
  if (a.kind() === 'ipv4') return { family: 4, value: v4Value(a as ipaddr.IPv4) };
  const v6 = a as ipaddr.IPv6;
  if (v6.isIPv4MappedAddress()) return { family: 4, value: v4Value(v6.toIPv4Address()) };
  return { family: 6, value: v6Value(v6) };
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

export interface ParsePrefixOptions {
  /**
   * Refuse a range written with host bits set (`10.0.0.1/8`) with BAN_HOST_BITS, instead of
   * clearing them. Default true: an operator who typed `10.0.0.1/8` may have meant the address.
   */
  readonly strict?: boolean;
}

/**
 * Parse "1.2.3.4", "10.0.0.0/8", "2001:db8::1", "2001:db8::/32". An IPv4-mapped IPv6 range of
 * length >= 96 becomes the IPv4 range. Throws BanAddressError on anything else, and (unless
 * `strict: false`) with code BAN_HOST_BITS on a range whose host bits are set.
 */
export function parsePrefix(text: string, opts: ParsePrefixOptions = {}): ParsedPrefix {
  const s = text.trim();
  const slash = s.indexOf('/');
  const addrText = slash >= 0 ? s.slice(0, slash) : s;
  const lenText = slash >= 0 ? s.slice(slash + 1) : undefined;
  let len: number | undefined;
  if (lenText !== undefined) {
    if (!/^\d{1,3}$/.test(lenText)) throw new BanAddressError(text);
    len = Number(lenText);
  }
  if (addrText.includes('%')) throw new BanAddressError(text);
  const a = parseLib(addrText);
  if (!a) throw new BanAddressError(text);
  let addr: ParsedAddress;
  let l: number;
  if (a.kind() === 'ipv4') {
    addr = { family: 4, value: v4Value(a as ipaddr.IPv4) };
    l = len ?? IPV4_BITS;
    if (l > IPV4_BITS) throw new BanAddressError(text);
  } else {
    const v6 = a as ipaddr.IPv6;
    l = len ?? IPV6_BITS;
    if (l > IPV6_BITS) throw new BanAddressError(text);
    if (v6.isIPv4MappedAddress() && l >= MAPPED_V4_LENGTH) {
      addr = { family: 4, value: v4Value(v6.toIPv4Address()) };
      l -= MAPPED_V4_LENGTH;
    } else {
      addr = { family: 6, value: v6Value(v6) };
    }
  }
  const p = prefixOf(addr, l);
  if ((opts.strict ?? true) && p.value !== addr.value) {
    const net = formatPrefix(p);
    throw new BanAddressError(
      text,
      'BAN_HOST_BITS',
      `${text.trim()} has host bits set: the range is ${net}; to mean one address, give it without "/${l}"`,
    );
  }
  return p;
}

/** Number of addresses a prefix covers, as a power of two: 2^(bits - length). */
export function prefixHostBits(p: ParsedPrefix): number {
  return (p.family === 4 ? IPV4_BITS : IPV6_BITS) - p.length;
}

/** True when `outer` contains every address of `inner` (same family, shorter or equal length). */
export function prefixContains(outer: ParsedPrefix, inner: ParsedPrefix): boolean {
  if (outer.family !== inner.family || outer.length > inner.length) return false;
  return prefixOf({ family: inner.family, value: inner.value } as ParsedAddress, outer.length).value === outer.value;
}

/** True when the two prefixes share at least one address. */
export function prefixesOverlap(a: ParsedPrefix, b: ParsedPrefix): boolean {
  return prefixContains(a, b) || prefixContains(b, a);
}

export function formatIPv4(v: number): string {
  return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

/** RFC 5952 text (lower case, longest run of two or more zero groups as "::"), by ipaddr.js. */
export function formatIPv6(v: bigint): string {
  const parts: number[] = [];
  for (let i = 7; i >= 0; i--) parts.push(Number((v >> BigInt(i * 16)) & 0xffffn));
  return new ipaddr.IPv6(parts).toRFC5952String();
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
