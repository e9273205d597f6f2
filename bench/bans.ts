import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { formatIPv4, formatIPv6 } from '../storage/bans/ban-address.js';
import { BanStore } from '../storage/bans/ban-store.js';
import type { LegacyRow } from './row.js';

/** One figure next to a baseline measured in the same run (bench/row.ts). */
type Row = LegacyRow;

const SINGLE_BANS = 10_000;
const CIDR_BANS = 1_000;
const QUERIES = 50_000;
const RUN_MS = 1_000;

/** Deterministic PRNG (mulberry32) so every run checks the same addresses. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Calls per second of `fn` over `inputs`, looping for about RUN_MS after a warm-up. */
function rate(inputs: readonly string[], fn: (s: string) => unknown): number {
  let sink = 0;
  for (const s of inputs) if (fn(s) !== undefined) sink++;
  let calls = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0;
  while (elapsed < RUN_MS) {
    for (const s of inputs) if (fn(s) !== undefined) sink++;
    calls += inputs.length;
    elapsed = Number(process.hrtime.bigint() - start) / 1e6;
  }
  if (sink < 0) console.log(sink); // keep the JIT from dropping the loop
  return Math.round((calls / elapsed) * 1000);
}

/**
 * The accept-time cost of the ban table: `check()` per second with 10,000 single-address bans
 * and 1,000 CIDR bans of mixed lengths present, next to a plain `Map.get` on the same address
 * strings (the floor for any lookup keyed by the socket's address text).
 */
export async function runBanBench(): Promise<Row[]> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'commusic-bench-bans-'));
  const store = BanStore.openInDir(dir);
  try {
    const r = rng(42);
    const now = Date.now();
    const expires = now + 3_600_000;
    const banned: string[] = [];
    const map = new Map<string, number>();
    for (let i = 0; i < SINGLE_BANS; i++) {
      const ip = i % 10 === 0
        ? formatIPv6((0x20010db8n << 96n) | (BigInt(Math.floor(r() * 2 ** 32)) << 64n) | 1n)
        : formatIPv4(((10 << 24) | Math.floor(r() * 2 ** 24)) >>> 0);
      store.add({ address: ip, expires, reason: 'bench', source: 'auto', level: 1 }, now);
      banned.push(ip);
      map.set(ip, expires);
    }
    for (let i = 0; i < CIDR_BANS; i++) {
      const len = 16 + (i % 15); // /16 .. /30
      const mask = (0xffffffff << (32 - len)) >>> 0;
      const net = (((172 << 24) | Math.floor(r() * 2 ** 24)) & mask) >>> 0; // a range without host bits
      store.add({ address: `${formatIPv4(net)}/${len}`, expires, reason: 'bench', source: 'manual' }, now);
    }

    // Half the queries hit a ban (single or inside a range), half miss.
    const v4: string[] = [];
    for (let i = 0; i < QUERIES; i++) {
      const k = i % 4;
      if (k === 0) v4.push(banned[Math.floor(r() * banned.length)]!);
      else if (k === 1) v4.push(formatIPv4(((172 << 24) | Math.floor(r() * 2 ** 24)) >>> 0));
      else v4.push(formatIPv4(((192 << 24) | Math.floor(r() * 2 ** 24)) >>> 0));
    }
    const v6: string[] = [];
    for (let i = 0; i < QUERIES / 5; i++) {
      v6.push(formatIPv6((0x20010db8n << 96n) | (BigInt(Math.floor(r() * 2 ** 32)) << 64n) | BigInt(i)));
    }
    const checkRate = rate(v4, (ip) => store.check(ip, now));
    const mapRate = rate(v4, (ip) => map.get(ip));
    const check6Rate = rate(v6, (ip) => store.check(ip, now));
    const map6Rate = rate(v6, (ip) => map.get(ip));
    return [
      {
        name: `ban check, IPv4 (${SINGLE_BANS} bans + ${CIDR_BANS} CIDR bans)`,
        value: checkRate,
        unit: 'checks/s',
        baseline: mapRate,
        baselineName: 'Map.get on address text',
      },
      {
        name: 'ban check, IPv6',
        value: check6Rate,
        unit: 'checks/s',
        baseline: map6Rate,
        baselineName: 'Map.get on address text',
      },
    ];
  } finally {
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const rows = await runBanBench();
  for (const row of rows) {
    const ratio = row.baseline > 0 ? (row.value / row.baseline).toFixed(3) : 'n/a';
    console.log(
      `${row.name}: ${row.value.toLocaleString('en')} ${row.unit}; ${row.baselineName}: ${row.baseline.toLocaleString('en')} ${row.unit}; ratio ${ratio}`,
    );
  }
}
