import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import winston from 'winston';
import { BanEngine } from '../daemon/bans/ban-engine.js';
import { statusReport } from '../daemon/monitoring/status-ops.js';
import { BanStore } from '../storage/bans/ban-store.js';
import { RawSocket, startDaemon, waitUntil } from './helpers/daemon.js';

/**
 * Issue 11 point 2 (status): `status` counts violations per event, not per banned source, and
 * each violation is logged once. 24 silent connections from 2 addresses (12 each): the first
 * silent one of each address bans it, the ban closes the other 11 at once, and every one of
 * the 24 is a `silent` event in status and one "violation" line in the log.
 */
function captureLogger(lines: Record<string, unknown>[]): winston.Logger {
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return winston.createLogger({ level: 'debug', format: winston.format.json(), transports: [new winston.transports.Stream({ stream })] });
}

test('24 silent connections from 2 addresses: status shows silent=24, the log 24 violation lines', { timeout: 60_000 }, async () => {
  const td = await startDaemon({ limits: { handshakeTimeoutMs: 300 } });
  const table = BanStore.openInDir(td.dataDir);
  const lines: Record<string, unknown>[] = [];
  const engine = new BanEngine({ table, bus: td.daemon.violations, purgeEvery: 0, logger: captureLogger(lines) });
  engine.onBan(() => td.daemon.disconnectBanned((ip) => table.check(ip, Date.now()) !== undefined));
  const sockets: RawSocket[] = [];
  try {
    for (const src of ['127.0.43.1', '127.0.43.2']) for (let i = 0; i < 12; i++) sockets.push(await RawSocket.open(td.port, src));
    await waitUntil(() => sockets.every((s) => s.closed), 20_000, 'every silent connection to be closed');
    await waitUntil(() => (td.daemon.stats.violations.get('silent') ?? 0) >= 24, 5_000, '24 silent events');
    assert.equal(statusReport({ daemon: td.daemon }).violations['silent'], 24);
    assert.equal(table.list(Date.now()).length, 2, 'two sources banned');
    assert.equal(table.list(Date.now()).reduce((n, b) => n + b.violationCount, 0), 24, 'every event counted against its ban');
    const logged = lines.filter((l) => l['message'] === 'violation' || l['message'] === 'violation from a banned source');
    assert.equal(logged.length, 24, 'one log line per violation');
  } finally {
    for (const s of sockets) s.socket.destroy();
    engine.close();
    table.close();
    await td.stop();
  }
});
