import { z } from 'zod';
import type { MetricsSources } from './metrics.js';
import type { OperationRegistry } from '../ops/operations.js';

/**
 * `commusicctl status`: the running daemon's figures through the control socket (operation
 * "status"). The context is the same set of providers the metrics read, so the two never
 * disagree. Without a running daemon there is nothing to report: the CLI says so.
 */
export interface StatusContext extends MetricsSources {
  readonly version?: string;
  /** Server identity key fingerprint. */
  readonly fingerprint?: string;
  /** An identity key rollover in progress: its phase and the other key (docs/OPERATIONS.md). */
  readonly identityRollover?: () => { phase: 'announce' | 'switched'; otherKey: string } | undefined;
  /** Client listener address. */
  readonly listen?: () => string;
  /** Health endpoint address and certificate fingerprint, when it runs. */
  readonly health?: () => { listen: string; certFingerprint: string } | undefined;
  /** When the health endpoint is not running: why (disabled, address in use, ...). */
  readonly healthOff?: () => string | undefined;
  readonly now?: () => number;
}

export interface StatusReport {
  version: string | null;
  fingerprint: string | null;
  listen: string | null;
  startedAt: string;
  uptimeSeconds: number;
  connections: number;
  pendingHandshakes: number;
  preLoginSessions: number;
  sessions: number;
  handshakes: { hello: number; established: number };
  refused: { banned: number; limit: number; evicted: number };
  requests: number;
  violations: Record<string, number>;
  openStores: number | null;
  storeCache: { open: number; limit: number; hitRatio: number | null; hits: number; misses: number; opens: number; evictions: number; rejected: number } | null;
  activeBans: number | null;
  outboxLength: number | null;
  keyFileWatch: string | null;
  /** null when no identity key rollover is in progress. */
  identityRollover: { phase: 'announce' | 'switched'; otherKey: string } | null;
  lastBackups: Record<string, string>;
  health: { listen: string; certFingerprint: string } | null;
  /** Why the health endpoint is off (null when it runs or nobody said). */
  healthOff: string | null;
}

export function statusReport(ctx: StatusContext): StatusReport {
  const now = (ctx.now ?? Date.now)();
  const d = ctx.daemon;
  let requests = 0;
  for (const n of d.stats.requests.values()) requests += n;
  const lastBackups: Record<string, string> = {};
  for (const [dest, t] of [...(ctx.lastBackups?.() ?? [])].sort((a, b) => (a[0] < b[0] ? -1 : 1))) lastBackups[dest] = new Date(t).toISOString();
  return {
    version: ctx.version ?? null,
    fingerprint: ctx.fingerprint ?? null,
    listen: ctx.listen?.() ?? null,
    startedAt: new Date(d.startedAt).toISOString(),
    uptimeSeconds: Math.max(0, Math.floor((now - d.startedAt) / 1000)),
    connections: d.connectionCount,
    pendingHandshakes: d.pendingHandshakes,
    preLoginSessions: d.preLoginSessions ?? 0,
    sessions: Math.max(0, d.connectionCount - d.pendingHandshakes),
    handshakes: { hello: d.stats.hellos, established: d.stats.established },
    refused: { banned: d.stats.refusedBanned, limit: d.stats.refusedLimit, evicted: d.stats.evicted },
    requests,
    violations: Object.fromEntries([...d.stats.violations].sort()),
    openStores: ctx.openStores?.() ?? null,
    storeCache: storeCacheReport(ctx),
    activeBans: ctx.activeBans?.() ?? null,
    outboxLength: ctx.outboxLength?.() ?? null,
    keyFileWatch: ctx.keyWatchState?.() ?? null,
    identityRollover: ctx.identityRollover?.() ?? null,
    lastBackups,
    health: ctx.health?.() ?? null,
    healthOff: ctx.health?.() ? null : (ctx.healthOff?.() ?? null),
  };
}

function storeCacheReport(ctx: StatusContext): StatusReport['storeCache'] {
  const c = ctx.storeCache?.();
  if (!c) return null;
  const n = c.hits + c.misses;
  return { open: c.open, limit: c.limit, hitRatio: n === 0 ? null : c.hits / n, hits: c.hits, misses: c.misses, opens: c.opens, evictions: c.evictions, rejected: c.rejected };
}

/** The store cache line of `status`, e.g. "12 open of 3248, hit rate 99.2% (5021 hits, 40 opens, 0 evictions)". */
export function formatStoreCache(s: StatusReport['storeCache']): string {
  if (!s) return 'n/a';
  const rate = s.hitRatio === null ? 'no lookups yet' : `hit rate ${(100 * s.hitRatio).toFixed(1)}%`;
  return `${s.open} open of ${s.limit}, ${rate} (${s.hits} hits, ${s.opens} opens, ${s.evictions} evictions)`;
}

/**
 * Register "status". With a registry whose context is not a StatusContext, pass `select` to
 * pick it out of the daemon's control context.
 */
export function registerStatusOps(registry: OperationRegistry<StatusContext>): void;
export function registerStatusOps<C>(registry: OperationRegistry<C>, select: (ctx: C) => StatusContext): void;
export function registerStatusOps<C>(registry: OperationRegistry<C>, select?: (ctx: C) => StatusContext): void {
  const pickCtx = select ?? ((c: C) => c as unknown as StatusContext);
  registry.register({
    name: 'status',
    schema: z.object({}).strict(),
    run: (ctx: C) => statusReport(pickCtx(ctx)),
  });
}

function duration(s: number): string {
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d > 0 ? `${d}d ${h}h ${m}m` : h > 0 ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
}

/** The text form of `commusicctl status`. */
export function formatStatus(r: StatusReport): string {
  const na = (v: number | string | null) => (v === null ? 'n/a' : String(v));
  const lines = [
    `commusicd ${na(r.version)}, up ${duration(r.uptimeSeconds)} (since ${r.startedAt})`,
    `listen:           ${na(r.listen)}`,
    `fingerprint:      ${na(r.fingerprint)}`,
    `connections:      ${r.connections} (${r.sessions} sessions of which ${r.preLoginSessions} not logged in, ${r.pendingHandshakes} handshaking)`,
    `handshakes:       ${r.handshakes.established} established of ${r.handshakes.hello} started`,
    `refused:          ${r.refused.banned} banned, ${r.refused.limit} over limits, ${r.refused.evicted} evicted`,
    `requests:         ${r.requests}`,
    `violations:       ${Object.keys(r.violations).length ? Object.entries(r.violations).map(([k, n]) => `${k}=${n}`).join(' ') : 'none'}`,
    `open club stores: ${na(r.openStores)}`,
    `store cache:      ${formatStoreCache(r.storeCache)}`,
    `active bans:      ${na(r.activeBans)}`,
    `mail outbox:      ${na(r.outboxLength)}`,
    `key-file watch:   ${na(r.keyFileWatch)}`,
    ...(r.identityRollover
      ? [`identity key:     rollover ${r.identityRollover.phase === 'announce' ? `announced, next key ${r.identityRollover.otherKey}` : `switched, previous key ${r.identityRollover.otherKey} still accepted until "keys rotate-identity retire"`}`]
      : []),
    `last backups:     ${Object.keys(r.lastBackups).length ? '' : 'none recorded'}`,
    ...Object.entries(r.lastBackups).map(([d, t]) => `  ${d}: ${t}`),
    `health endpoint:  ${r.health ? `https://${r.health.listen} (certificate ${r.health.certFingerprint})` : `off${r.healthOff ? `: ${r.healthOff}` : ''}`}`,
  ];
  return `${lines.join('\n')}\n`;
}
