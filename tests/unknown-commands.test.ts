import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { connect, type Connection } from '../client/connection.js';
import { BanEngine } from '../daemon/bans/ban-engine.js';
import { DEFAULT_BAN_POLICY } from '../daemon/bans/ban-policy.js';
import { createDaemonMetrics } from '../daemon/monitoring/metrics.js';
import { statusReport } from '../daemon/monitoring/status-ops.js';
import { UNKNOWN_COMMAND_LABEL } from '../daemon/edge/server.js';
import { BanStore } from '../storage/bans/ban-store.js';
import { startDaemon, waitUntil } from './helpers/daemon.js';

/**
 * Issue 11 point 5: client-chosen strings never become unbounded keys. 50,000 distinct unknown
 * command names leave the server's request table, its memory and /metrics flat; repeated
 * unknown commands are violations of kind `command` and get the sender banned.
 */
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const name = (i: number) => `probe.${i.toString(36)}.${'x'.repeat(i % 17)}`;

async function sendUnknown(conn: Connection, from: number, count: number, batch = 64): Promise<void> {
  for (let i = from; i < from + count; i += batch) {
    const n = Math.min(batch, from + count - i);
    const results = await Promise.allSettled(Array.from({ length: n }, (_, k) => conn.request(name(i + k), {})));
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.equal((r.reason as { code?: string }).code, 'UNKNOWN_COMMAND');
    }
  }
}

test('50,000 distinct unknown command names leave the request table, heap and /metrics flat', { timeout: 120_000 }, async () => {
  const td = await startDaemon();
  const metrics = createDaemonMetrics({ daemon: td.daemon }, { defaultMetrics: false });
  const conn = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint });
  try {
    await sendUnknown(conn, 0, 1000);
    gc();
    const heap0 = process.memoryUsage().heapUsed;
    const metrics0 = (await metrics.render()).body;
    const keys0 = td.daemon.stats.requests.size;
    await sendUnknown(conn, 1000, 49_000);
    gc();
    const heap1 = process.memoryUsage().heapUsed;
    const metrics1 = (await metrics.render()).body;
    assert.equal(td.daemon.stats.requests.size, keys0, 'no new request-table keys');
    assert.deepEqual([...td.daemon.stats.requests.keys()], [`${UNKNOWN_COMMAND_LABEL}:UNKNOWN_COMMAND`]);
    assert.equal(td.daemon.stats.requests.get(`${UNKNOWN_COMMAND_LABEL}:UNKNOWN_COMMAND`), 50_000);
    const shape = (m: string) => m.replace(/\d+/g, 'N');
    assert.equal(shape(metrics1), shape(metrics0), '/metrics: the same series, only the counts grew');
    assert.ok(metrics1.length <= metrics0.length + 4, `/metrics ${metrics0.length} -> ${metrics1.length} bytes`);
    assert.doesNotMatch(metrics1, /probe\./, 'no client-chosen name in /metrics');
    // Loose bound: the whole test process (client included) may not keep 50,000 names around.
    assert.ok(heap1 - heap0 < 8 * 1024 * 1024, `heap grew by ${heap1 - heap0} bytes`);
    assert.equal(td.violations.filter((v) => v.kind === 'command').length, 50_000, 'each unknown command is a violation event');
    assert.equal(statusReport({ daemon: td.daemon }).violations['command'], 50_000);
  } finally {
    await conn.close().catch(() => undefined);
    await td.stop();
  }
});

test('repeated unknown commands get the sender banned; /metrics stays flat until then', { timeout: 60_000 }, async () => {
  const td = await startDaemon();
  const table = BanStore.openInDir(td.dataDir);
  const engine = new BanEngine({ table, bus: td.daemon.violations, purgeEvery: 0 });
  engine.onBan(() => td.daemon.disconnectBanned((ip) => table.check(ip, Date.now()) !== undefined));
  const metrics = createDaemonMetrics({ daemon: td.daemon }, { defaultMetrics: false });
  const conn = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.42.1' });
  const sizes: number[] = [];
  let sent = 0;
  try {
    const maxRetry = DEFAULT_BAN_POLICY.kinds.command.maxRetry;
    while (sent < 50_000 && !table.check('127.0.42.1', Date.now())) {
      try {
        await conn.request(name(sent++), {});
      } catch (e) {
        if ((e as { code?: string }).code !== 'UNKNOWN_COMMAND') break; // the ban closed the session
      }
      if (sent >= 10) sizes.push((await metrics.render()).body.length);
    }
    await waitUntil(() => table.check('127.0.42.1', Date.now()) !== undefined, 10_000, 'the ban');
    assert.equal(sent, maxRetry, `banned at the ${maxRetry}th unknown command`);
    assert.match(table.check('127.0.42.1', Date.now())!.reason, /^command: 20 within 10m/);
    assert.equal(new Set(sizes).size, 1, `/metrics size flat across the requests before the ban: ${[...new Set(sizes)].join(', ')}`);
    await waitUntil(() => td.daemon.connectionCount === 0, 10_000, 'the banned session to close');
  } finally {
    await conn.close().catch(() => undefined);
    engine.close();
    table.close();
    await td.stop();
  }
});
