import { test } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { connect, type Connection } from '../client/connection.js';
import { ClientError, RemoteError } from '../client/errors.js';
import { CLOSE_IDLE } from '../protocol/constants.js';
import { RawSocket, rawHandshake, startDaemon, waitUntil, type TestDaemon } from './helpers/daemon.js';

/**
 * Admission limits, the idle timeout and graceful shutdown, each against its own daemon.
 */
async function withDaemon(opts: Parameters<typeof startDaemon>[0], body: (td: TestDaemon) => Promise<void>): Promise<void> {
  const td = await startDaemon(opts);
  try {
    await body(td);
  } finally {
    await td.stop();
  }
}

const open = (td: TestDaemon, localAddress: string, extra: { connectTimeoutMs?: number } = {}): Promise<Connection> =>
  connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress, connectTimeoutMs: extra.connectTimeoutMs ?? 5000 });

test('maxConnections: the connection over the limit is closed at once; a slot freed is usable again', { timeout: 30000 }, async () => {
  await withDaemon({ limits: { maxConnections: 3 } }, async (td) => {
    const conns = [await open(td, '127.0.0.50'), await open(td, '127.0.0.51'), await open(td, '127.0.0.52')];
    try {
      await waitUntil(() => td.daemon.connectionCount === 3, 3000, 'three connections');
      // Refused at once, not by a timeout: a client-side timeout would be CONNECT_TIMEOUT, and the
      // server counts the refusal at its limit.
      await assert.rejects(open(td, '127.0.0.53'), (e: unknown) => e instanceof ClientError && e.code === 'HANDSHAKE_FAILED');
      assert.equal(td.daemon.stats.refusedLimit, 1, 'refused at the connection limit');
      for (const c of conns) assert.ok((await c.ping()) >= 0, 'admitted connections keep working');
      await conns.pop()!.close();
      await waitUntil(() => td.daemon.connectionCount === 2, 3000, 'the freed slot');
      const again = await open(td, '127.0.0.53');
      conns.push(again);
      assert.ok((await again.ping()) >= 0);
    } finally {
      for (const c of conns) await c.close();
    }
  });
});

test('maxPendingHandshakes: a handshake over the total is closed at once; established ones do not count', { timeout: 30000 }, async () => {
  await withDaemon({ limits: { maxPendingHandshakes: 3, handshakeTimeoutMs: 20000 } }, async (td) => {
    const silent = [await RawSocket.open(td.port, '127.0.0.54'), await RawSocket.open(td.port, '127.0.0.55'), await RawSocket.open(td.port, '127.0.0.56')];
    try {
      await waitUntil(() => td.daemon.pendingHandshakes === 3, 3000, 'three pending handshakes');
      const extra = await RawSocket.open(td.port, '127.0.0.57');
      assert.ok(await extra.closedWithin(3000), 'the fourth pending handshake is closed at once');
      assert.equal(td.daemon.stats.refusedLimit, 1);
      // Refusals at a limit count (issue 11): a flood's sources get banned, not only its first.
      assert.deepEqual(td.violations.map((v) => [v.ip, v.kind]), [['127.0.0.57', 'limit']]);
      for (const s of silent) assert.equal(s.closed, false, 'the pending ones are left alone');
      silent.pop()!.destroy();
      await waitUntil(() => td.daemon.pendingHandshakes === 2, 3000, 'a pending slot freed');
      // The client is established when it sends its Finished; the server a moment later.
      const c1 = await open(td, '127.0.0.57');
      await waitUntil(() => td.daemon.pendingHandshakes === 2, 3000, 'established connections to leave the pending count');
      const c2 = await open(td, '127.0.0.58');
      try {
        await waitUntil(() => td.daemon.pendingHandshakes === 2, 3000, 'established connections to leave the pending count');
        assert.ok((await c1.ping()) >= 0 && (await c2.ping()) >= 0);
      } finally {
        await c1.close();
        await c2.close();
      }
    } finally {
      for (const s of silent) s.destroy();
    }
  });
});

test('maxPendingHandshakesPerIp: the extra handshake from one address is closed; another address still works', { timeout: 30000 }, async () => {
  await withDaemon({ limits: { maxPendingHandshakesPerIp: 2, handshakeTimeoutMs: 20000 } }, async (td) => {
    const silent = [await RawSocket.open(td.port, '127.0.0.60'), await RawSocket.open(td.port, '127.0.0.60')];
    try {
      await waitUntil(() => td.daemon.pendingHandshakes === 2, 3000, 'two pending handshakes');
      const extra = await RawSocket.open(td.port, '127.0.0.60');
      assert.ok(await extra.closedWithin(3000), 'the third from the same address is closed at once');
      assert.equal(td.daemon.stats.refusedLimit, 1);
      await assert.rejects(open(td, '127.0.0.60'), (e: unknown) => e instanceof ClientError && e.code === 'BUSY');
      const other = await open(td, '127.0.0.61');
      try {
        assert.ok((await other.ping()) >= 0, 'another address is unaffected');
      } finally {
        await other.close();
      }
      for (const s of silent) assert.equal(s.closed, false);
    } finally {
      for (const s of silent) s.destroy();
    }
  });
});

test('an idle established session is closed with CLOSE_IDLE; an active one is kept', { timeout: 30000 }, async () => {
  await withDaemon({ limits: { idleTimeoutMs: 1000 } }, async (td) => {
    const idle = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.0.62' });
    const active = await open(td, '127.0.0.63');
    try {
      // Keep the active session busy (back-to-back pings, no fixed pauses) until the idle one is
      // closed: the condition, not a time.
      const deadline = Date.now() + 15_000;
      while (!idle.raw.closed && Date.now() < deadline) await active.ping();
      assert.ok(idle.raw.closed, 'the idle session is closed');
      assert.equal(active.closed, false, 'a session with requests is kept open');
      const ev = idle.events();
      assert.deepEqual(ev.at(-1), { type: 'closed', code: CLOSE_IDLE }, 'with an authenticated CLOSE carrying the idle code');
      assert.equal(td.violations.length, 0, 'idling is no violation');
    } finally {
      idle.raw.destroy();
      await active.close();
    }
  });
});

test('graceful shutdown: an in-flight request finishes, new requests get SHUTTING_DOWN, new connections are refused', { timeout: 30000 }, async () => {
  await withDaemon({}, async (td) => {
    let started = false;
    let finished = false;
    // The handler runs until the test releases it, so the refusals below surely come while it runs.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    td.daemon.dispatcher.register({
      name: 'test.slow',
      schema: z.object({}).strict(),
      handler: async () => {
        started = true;
        await gate;
        finished = true;
        return { payload: { done: true } };
      },
    });
    const c = await open(td, '127.0.0.64');
    const slow = c.request('test.slow', {});
    await waitUntil(() => started, 3000, 'the slow command to start');
    const stopping = td.daemon.stop(10000);
    const refused = c.request('ping', {});
    await assert.rejects(refused, (e: unknown) => e instanceof RemoteError && e.code === 'SHUTTING_DOWN');
    await assert.rejects(open(td, '127.0.0.65', { connectTimeoutMs: 3000 }), (e: unknown) => e instanceof ClientError && e.code === 'CONNECT_FAILED');
    assert.equal(finished, false, 'the slow request was still running when the refusals came');
    release();
    assert.deepEqual((await slow).payload, { done: true }, 'the in-flight request got its answer');
    await stopping;
    await waitUntil(() => c.closed, 3000, 'the client to see the close');
    await c.close();
  });
});

test('graceful shutdown: a request running past the grace period is cut off at the deadline', { timeout: 30000 }, async () => {
  await withDaemon({}, async (td) => {
    td.daemon.dispatcher.register({
      name: 'test.forever',
      schema: z.object({}).strict(),
      handler: (_p, ctx) => new Promise((_resolve, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason))),
    });
    const c = await open(td, '127.0.0.66');
    const hung = c.request('test.forever', {});
    await c.ping();
    const t0 = Date.now();
    await td.daemon.stop(300);
    const took = Date.now() - t0;
    // A lower bound only: the grace deadline is a timer, which never fires early, so a loaded
    // machine can only make this larger. No upper bound: stop() resolving at all (the request never
    // finishes on its own) shows the cut-off.
    assert.ok(took >= 250, `stop waited for the grace period (${took} ms)`);
    await assert.rejects(hung, (e: unknown) => e instanceof ClientError && e.code === 'CONNECTION_CLOSED');
    await c.close();
  });
});
