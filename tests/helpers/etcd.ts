import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { reapWithThisProcess } from './reaper.js';

/**
 * A real 3-member etcd cluster for the cluster tests (issue 14): each member on its own loopback
 * address (127.0.0.21, .22, .23 by default) with free ports, a temporary data folder, and the
 * Debian defaults for heartbeat (100 ms) and election timeout (1000 ms). Members can be killed with
 * SIGKILL and started again on the same data; `waitHealthy` and `leaderIndex` poll conditions
 * (the member's /health and /metrics), never sleep a fixed time.
 */
export interface EtcdMember {
  readonly name: string;
  readonly host: string;
  readonly clientPort: number;
  readonly peerPort: number;
  /** `http://host:clientPort`. */
  readonly clientUrl: string;
  running(): boolean;
}

export interface EtcdCluster {
  readonly members: readonly EtcdMember[];
  /** The client URLs of every member, for the etcd client's host list. */
  readonly endpoints: string[];
  /** SIGKILL one member and wait until it has exited. */
  kill(index: number): Promise<void>;
  /** Start a killed member again on its data folder. */
  restart(index: number): Promise<void>;
  /** Index of the member that reports itself leader, waiting until one does (at most `timeoutMs`). */
  leaderIndex(timeoutMs?: number): Promise<number>;
  /** Wait until every running member answers /health with a leader in sight. */
  waitHealthy(timeoutMs?: number): Promise<void>;
  /** Kill every member and remove the data folders. */
  stop(): Promise<void>;
}

export const ETCD_PATH = '/usr/bin/etcd';

/** Why etcd cannot run here, or undefined when it can (the tests skip with this text). */
export function etcdMissing(): string | undefined {
  if (!existsSync(ETCD_PATH)) return `etcd not installed (${ETCD_PATH} missing): install Debian etcd-server (apt-get install -y etcd-server)`;
  return undefined;
}

/** A port free on `host` now (bound to 0 and released; the caller binds it next). */
export async function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

async function poll<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let delay = 20;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`etcd test cluster: ${what} not reached within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 200);
  }
}

async function httpText(url: string, timeoutMs: number): Promise<string | undefined> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    return await res.text();
  } catch {
    return undefined;
  }
}

export interface EtcdClusterOptions {
  /** Loopback addresses of the three members. */
  hosts?: [string, string, string];
}

/** Start three etcd members and wait until the cluster has a leader and every member is healthy. */
export async function startEtcdCluster(opts: EtcdClusterOptions = {}): Promise<EtcdCluster> {
  const missing = etcdMissing();
  if (missing) throw new Error(missing);
  const hosts = opts.hosts ?? ['127.0.0.21', '127.0.0.22', '127.0.0.23'];
  const root = await mkdtemp(join(tmpdir(), 'commusic-etcd-'));
  reapWithThisProcess(root);
  const token = `commusic-test-${process.pid}-${Date.now()}`;
  const children = new Map<number, ChildProcess>();
  const logs = new Map<number, string>();
  const isUp = (i: number) => {
    const c = children.get(i);
    return c !== undefined && c.exitCode === null && c.signalCode === null;
  };
  const specs: Array<EtcdMember & { dataDir: string }> = [];
  for (let i = 0; i < hosts.length; i++) {
    const host = hosts[i]!;
    const clientPort = await freePort(host);
    const peerPort = await freePort(host);
    const name = `m${i + 1}`;
    specs.push({ name, host, clientPort, peerPort, clientUrl: `http://${host}:${clientPort}`, dataDir: join(root, name), running: () => isUp(i) });
  }
  const initialCluster = specs.map((m) => `${m.name}=http://${m.host}:${m.peerPort}`).join(',');

  function spawnMember(i: number): void {
    const m = specs[i]!;
    const args = [
      '--name', m.name,
      '--data-dir', m.dataDir,
      '--listen-client-urls', m.clientUrl,
      '--advertise-client-urls', m.clientUrl,
      '--listen-peer-urls', `http://${m.host}:${m.peerPort}`,
      '--initial-advertise-peer-urls', `http://${m.host}:${m.peerPort}`,
      '--initial-cluster', initialCluster,
      '--initial-cluster-state', 'new',
      '--initial-cluster-token', token,
      '--logger', 'zap',
      '--log-level', 'error',
    ];
    const c = spawn(ETCD_PATH, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    logs.set(i, '');
    c.stderr!.on('data', (b: Buffer) => {
      const prev = logs.get(i) ?? '';
      logs.set(i, (prev + b.toString()).slice(-4000));
    });
    children.set(i, c);
  }

  const cluster: EtcdCluster = {
    members: specs,
    endpoints: specs.map((m) => m.clientUrl),
    async kill(i) {
      const c = children.get(i);
      if (!c || !isUp(i)) return;
      await new Promise<void>((resolve) => {
        c.once('exit', () => resolve());
        c.kill('SIGKILL');
      });
    },
    async restart(i) {
      if (isUp(i)) return;
      spawnMember(i);
      const m = specs[i]!;
      await poll(`member ${m.name} healthy after restart`, 20_000, async () => {
        if (!isUp(i)) throw new Error(`etcd member ${m.name} exited: ${logs.get(i) ?? ''}`);
        const t = await httpText(`${m.clientUrl}/health`, 1000);
        return t !== undefined && t.includes('"health":"true"') ? true : undefined;
      });
    },
    async leaderIndex(timeoutMs = 15_000) {
      return poll('an etcd leader', timeoutMs, async () => {
        for (let i = 0; i < specs.length; i++) {
          if (!isUp(i)) continue;
          const t = await httpText(`${specs[i]!.clientUrl}/metrics`, 1000);
          if (t !== undefined && /^etcd_server_is_leader 1$/m.test(t)) return i;
        }
        return undefined;
      });
    },
    async waitHealthy(timeoutMs = 20_000) {
      await poll('every running member healthy', timeoutMs, async () => {
        for (let i = 0; i < specs.length; i++) {
          if (!isUp(i)) {
            if (children.has(i) && children.get(i)!.signalCode === null && children.get(i)!.exitCode !== null) {
              throw new Error(`etcd member ${specs[i]!.name} exited: ${logs.get(i) ?? ''}`);
            }
            continue;
          }
          const t = await httpText(`${specs[i]!.clientUrl}/health`, 1000);
          if (t === undefined || !t.includes('"health":"true"')) return undefined;
        }
        return true;
      });
    },
    async stop() {
      for (let i = 0; i < specs.length; i++) await cluster.kill(i);
      await rm(root, { recursive: true, force: true });
    },
  };
  try {
    for (let i = 0; i < specs.length; i++) spawnMember(i);
    await cluster.waitHealthy();
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  return cluster;
}
