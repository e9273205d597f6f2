/**
 * Hostile connections against the default configuration (issue 11, must-show 1): 600 silent
 * connections from 50 addresses (12 each, under the 16-per-address limit, each address in its own
 * /24) are opened and held while a legitimate client from another address does full handshakes
 * one after another. Figures: the legitimate client's handshake success rate under the flood
 * (goal >= 99 %), its handshake p99 under the flood against its quiet p99 measured first in the
 * same run (goal <= 3x), and how many of the 50 flooding addresses end up banned (goal: all).
 * The whole stack runs in this process as `commusicd` assembles it (startServer), with the
 * default limits and ban policy; only the data folder is temporary and the health endpoint off.
 * Standalone: `node dist/bench/flood.js [--quick]`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { connect } from '../client/connection.js';
import { configSchema } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { startServer } from '../daemon/main/main.js';
import type { Row } from './row.js';

const HOST = '127.0.0.1';
const ATTACKERS = 50;
const PER_ATTACKER = 12;
const LEGIT = '127.0.60.1';
const attacker = (i: number) => `127.1.${i + 1}.1`;

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function handshake(port: number, fingerprint: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  const c = await connect({ host: HOST, port, fingerprint, localAddress: LEGIT, connectTimeoutMs: 10_000 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  await c.close();
  return ms;
}

function silent(port: number, from: string): Promise<Socket> {
  return new Promise((resolve) => {
    const s = netConnect({ host: HOST, port, localAddress: from });
    s.on('error', () => undefined);
    s.once('connect', () => resolve(s));
    s.once('close', () => resolve(s));
  });
}

export interface FloodOptions {
  quick?: boolean;
  log?: (line: string) => void;
}

export async function runFloodBench(opts: FloodOptions = {}): Promise<Row[]> {
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const dataDir = await mkdtemp(join(tmpdir(), 'commusic-bench-flood-'));
  const config = configSchema.parse({ dataDir, listen: `${HOST}:0`, logLevel: 'error', health: { enabled: false } });
  const server = await startServer(config, { logger: nullLogger() });
  const sockets: Socket[] = [];
  try {
    const port = server.daemon.address().port;
    const fp = server.identity.fingerprint;
    const quietN = opts.quick ? 60 : 200;
    for (let i = 0; i < 10; i++) await handshake(port, fp); // warm-up
    const quiet: number[] = [];
    for (let i = 0; i < quietN; i++) quiet.push(await handshake(port, fp));
    quiet.sort((a, b) => a - b);

    // The flood: all 600 opened at once and held (never written to, never closed by us).
    const t0 = Date.now();
    const opening = Array.from({ length: ATTACKERS * PER_ATTACKER }, (_, k) => silent(port, attacker(k % ATTACKERS)));
    const loaded: number[] = [];
    let failed = 0;
    const floodMs = Math.max(12_000, config.limits.handshakeTimeoutMs + 2_000);
    const allBanned = () => Array.from({ length: ATTACKERS }, (_, i) => attacker(i)).every((ip) => server.banSystem.table.check(ip, Date.now()));
    let firstAllBanned: number | undefined;
    while (Date.now() - t0 < floodMs) {
      try {
        loaded.push(await handshake(port, fp));
      } catch {
        failed++;
      }
      if (firstAllBanned === undefined && allBanned()) firstAllBanned = Date.now() - t0;
    }
    sockets.push(...(await Promise.all(opening)));
    loaded.sort((a, b) => a - b);
    const attempts = loaded.length + failed;
    const success = attempts > 0 ? (loaded.length / attempts) * 100 : 0;
    const banned = Array.from({ length: ATTACKERS }, (_, i) => attacker(i)).filter((ip) => server.banSystem.table.check(ip, Date.now())).length;
    const qP99 = percentile(quiet, 99);
    const lP99 = percentile(loaded, 99);
    const st = server.daemon.stats;
    const note = `${attempts} handshakes in ${(floodMs / 1000).toFixed(0)} s of flood, ${failed} failed; all 50 banned after ${firstAllBanned !== undefined ? `${(firstAllBanned / 1000).toFixed(1)} s` : 'never'}; server: ${st.refusedLimit} refused at limits, ${st.evicted} evicted, ${st.refusedBanned} refused as banned, violations ${[...st.violations].map(([k, n]) => `${k}=${n}`).join(' ')}`;
    log(`flood: ${note}`);
    return [
      {
        group: 'flood',
        name: 'legit handshakes completed during flood',
        value: success,
        unit: '%',
        baseline: 100,
        baselineName: 'quiet (all completed)',
        higherIsBetter: true,
        target: '>= 99 %',
        met: success >= 99,
        note,
      },
      {
        group: 'flood',
        name: 'legit handshake p99 during flood',
        value: lP99,
        unit: 'ms',
        baseline: qP99,
        baselineName: 'same client, quiet',
        higherIsBetter: false,
        target: '<= 3x quiet',
        met: lP99 <= 3 * qP99,
      },
      {
        group: 'flood',
        name: 'flooding addresses banned',
        value: banned,
        unit: 'of 50',
        baseline: ATTACKERS,
        baselineName: 'all flooding addresses',
        higherIsBetter: true,
        target: '50 of 50',
        met: banned === ATTACKERS,
      },
    ];
  } finally {
    for (const s of sockets) s.destroy();
    await server.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const rows = await runFloodBench({ quick: process.argv.includes('--quick') });
  for (const r of rows) console.log(`${r.name}: ${r.value.toFixed(2)} ${r.unit} (baseline ${r.baseline.toFixed(2)} ${r.unit}, ${r.baselineName}) target ${r.target}: ${r.met ? 'met' : 'NOT met'}`);
  for (const r of rows) if (r.note) console.log(r.note);
}
