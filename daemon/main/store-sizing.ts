/**
 * Sizing the club store cache (`storeCache` in the configuration) and the start-up check of what
 * a size implies: every open store holds about STORE_FDS file descriptors (the database, its
 * `-wal` and its `-shm`) and about STORE_MEMORY_BYTES of memory (page cache, schema, prepared
 * statements), measured in issue 22. The check compares them with the process's open-file limit
 * (read from /proc/self/limits: Node has no getrlimit) and the memory budget, and refuses a
 * setting that cannot work with a message that says what to set.
 *
 * Rule (docs/OPERATIONS.md "Sizing the store cache"): maxOpen >= the clubs active at once; open
 * files >= FD_RESERVE + STORE_FDS x maxOpen + the connections; memory budget >= maxOpen x 0.4 MiB.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';

/** File descriptors one open store holds: club.db, club.db-wal, club.db-shm. */
export const STORE_FDS = 3;
/** Memory one open store holds, measured with 1,000 stores open (issue 22): about 0.4 MiB. */
export const STORE_MEMORY_BYTES = Math.round(0.4 * 1024 * 1024);
/**
 * Descriptors kept for everything else: server.db, bans db, logs, listeners, backups, documents,
 * and the evicted stores waiting for their deferred close (at most 64, storage/club/store-cache.ts).
 */
export const FD_RESERVE = 256;
/** At most this share of the open-file limit is set aside for client connections in `auto`. */
export const CONNECTION_FD_SHARE = 0.5;
/** Share of the memory limit the store cache may take by default. */
export const DEFAULT_MEMORY_SHARE = 0.25;

export type MaxOpenSetting = 'auto' | number;

export interface SizingInput {
  /** The configured `storeCache.maxOpen`. */
  setting: MaxOpenSetting;
  /** Clubs hosted on this server (not being deleted): the most that can be active at once. */
  clubs: number;
  /** `limits.maxConnections`. */
  maxConnections: number;
  /** Soft open-file limit of this process; Infinity when unlimited or unknown. */
  openFileLimit: number;
  /** Memory the store cache may use, in bytes. */
  memoryBudgetBytes: number;
}

export type SizingResult =
  | { ok: true; maxOpen: number; fdsNeeded: number; memoryBytes: number; warnings: string[] }
  | { ok: false; message: string };

const MiB = 1024 * 1024;

function mib(n: number): string {
  return `${Math.ceil(n / MiB)} MiB`;
}

/**
 * Decide the store cache size and check it against the limits.
 * - `auto` (the default): as many stores as the open-file limit and the memory budget allow
 *   (after FD_RESERVE and up to half the descriptors for connections); refused when that is
 *   fewer than the clubs hosted, because then busy clubs would reopen stores on every request.
 * - a number: refused when its descriptors or memory do not fit; a warning when it is below the
 *   number of clubs (accepted: the operator knows how many are active at once).
 */
export function planStoreCache(i: SizingInput): SizingResult {
  const nofile = i.openFileLimit;
  const connFds = Number.isFinite(nofile) ? Math.min(i.maxConnections, Math.floor(nofile * CONNECTION_FD_SHARE)) : i.maxConnections;
  const fdCap = Number.isFinite(nofile) ? Math.floor((nofile - FD_RESERVE - connFds) / STORE_FDS) : Number.MAX_SAFE_INTEGER;
  const memCap = Math.floor(i.memoryBudgetBytes / STORE_MEMORY_BYTES);
  const warnings: string[] = [];
  const fdsFor = (n: number) => FD_RESERVE + STORE_FDS * n;
  if (i.setting === 'auto') {
    const cap = Math.min(fdCap, memCap, 1_000_000);
    if (cap < Math.max(1, i.clubs)) {
      const want = Math.max(1, i.clubs);
      const needFiles = fdsFor(want) + i.maxConnections;
      const parts: string[] = [];
      if (fdCap < want) parts.push(`raise the open-file limit to at least ${needFiles} (LimitNOFILE=${needFiles} in the systemd unit, or ulimit -n; now ${nofile})`);
      if (memCap < want) parts.push(`raise storeCache.memoryBudgetMiB to at least ${Math.ceil((want * STORE_MEMORY_BYTES) / MiB)} (now ${Math.floor(i.memoryBudgetBytes / MiB)})`);
      return {
        ok: false,
        message:
          `store cache: ${i.clubs} clubs are hosted but only ${Math.max(0, cap)} stores can be open at once ` +
          `(${STORE_FDS} open files and about ${(STORE_MEMORY_BYTES / MiB).toFixed(1)} MiB each). To hold them all, ${parts.join(' and ')}; ` +
          `or set storeCache.maxOpen to the number of clubs active at once (at most ${Math.max(1, cap)}), accepting a store reopen (about 1-5 ms CPU) for each request past it`,
      };
    }
    if (Number.isFinite(nofile) && nofile - FD_RESERVE - STORE_FDS * cap < i.maxConnections) {
      warnings.push(`open-file limit ${nofile} leaves room for about ${Math.max(0, nofile - fdsFor(cap))} connections with all ${cap} stores open (limits.maxConnections is ${i.maxConnections})`);
    }
    return { ok: true, maxOpen: Math.max(1, cap), fdsNeeded: fdsFor(cap), memoryBytes: cap * STORE_MEMORY_BYTES, warnings };
  }
  const n = i.setting;
  if (Number.isFinite(nofile) && fdsFor(n) > nofile) {
    return {
      ok: false,
      message: `store cache: storeCache.maxOpen=${n} needs ${fdsFor(n)} open files (${STORE_FDS} per store + ${FD_RESERVE}) but the limit is ${nofile}: raise the open-file limit to at least ${fdsFor(n) + i.maxConnections} (LimitNOFILE) or lower storeCache.maxOpen to ${Math.max(1, Math.floor((nofile - FD_RESERVE) / STORE_FDS))} or less`,
    };
  }
  if (n * STORE_MEMORY_BYTES > i.memoryBudgetBytes) {
    return {
      ok: false,
      message: `store cache: storeCache.maxOpen=${n} needs about ${mib(n * STORE_MEMORY_BYTES)} of memory but the budget is ${mib(i.memoryBudgetBytes)}: raise storeCache.memoryBudgetMiB to ${Math.ceil((n * STORE_MEMORY_BYTES) / MiB)} or lower storeCache.maxOpen to ${Math.max(1, memCap)}`,
    };
  }
  if (n < i.clubs) warnings.push(`storeCache.maxOpen=${n} is below the ${i.clubs} clubs hosted: with more than ${n} clubs active at once, requests past it reopen a store (about 1-5 ms CPU each)`);
  if (Number.isFinite(nofile) && nofile - fdsFor(n) < i.maxConnections) {
    warnings.push(`open-file limit ${nofile} leaves room for about ${Math.max(0, nofile - fdsFor(n))} connections with all ${n} stores open (limits.maxConnections is ${i.maxConnections})`);
  }
  return { ok: true, maxOpen: n, fdsNeeded: fdsFor(n), memoryBytes: n * STORE_MEMORY_BYTES, warnings };
}

/**
 * The soft "Max open files" limit from the text of /proc/<pid>/limits; Infinity for
 * "unlimited", undefined when the line is missing or malformed.
 */
export function parseOpenFileLimit(limitsText: string): number | undefined {
  const line = limitsText.split('\n').find((l) => l.startsWith('Max open files'));
  if (!line) return undefined;
  const m = /^Max open files\s+(\S+)\s+(\S+)/.exec(line);
  if (!m) return undefined;
  if (m[1] === 'unlimited') return Infinity;
  const n = Number(m[1]);
  return Number.isInteger(n) && n > 0 ? n : undefined;
}

/** This process's soft open-file limit (Linux /proc/self/limits); Infinity where unknown. */
export function processOpenFileLimit(path = '/proc/self/limits'): number {
  try {
    return parseOpenFileLimit(readFileSync(path, 'utf8')) ?? Infinity;
  } catch {
    return Infinity;
  }
}

/** Memory this process may use: the machine's, or a lower cgroup v2 limit (containers, systemd MemoryMax). */
export function processMemoryLimit(cgroupFile = '/sys/fs/cgroup/memory.max'): number {
  let limit = os.totalmem();
  try {
    const v = readFileSync(cgroupFile, 'utf8').trim();
    const n = Number(v);
    if (v !== 'max' && Number.isFinite(n) && n > 0) limit = Math.min(limit, n);
  } catch {
    /* no cgroup v2 limit visible */
  }
  return limit;
}

/** The memory budget of the store cache: `storeCache.memoryBudgetMiB`, or a share of the limit. */
export function storeMemoryBudget(memoryBudgetMiB: number | undefined, memoryLimit = processMemoryLimit()): number {
  return memoryBudgetMiB !== undefined ? memoryBudgetMiB * MiB : Math.floor(memoryLimit * DEFAULT_MEMORY_SHARE);
}
