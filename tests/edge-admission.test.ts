import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { connect, type Connection } from '../client/connection.js';
import { ClientError } from '../client/errors.js';
import { Admission, type SlotHolder } from '../daemon/edge/admission.js';
import { configSchema } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { startServer } from '../daemon/main/main.js';
import { bansAdd } from '../daemon/bans/ban-ops.js';
import { CLIENT_HELLO_LEN, RECORD_DATA } from '../protocol/constants.js';
import { decodeRefusal, encodeRefusal } from '../protocol/refusal.js';
import { ClientSession, pinFingerprint } from '../protocol/client-session.js';
import { RawSocket, rawHandshake, startDaemon, waitUntil } from './helpers/daemon.js';

/**
 * Issue 11 points 2 and 3 at the edge: an address holding sessions that never log in cannot
 * keep others out; a dripped record is cut at its deadline; a partial ClientHello counts as
 * `handshake`; a banned client is told BANNED and until when, in the SDK and the CLI.
 */
const limits = configSchema.parse({}).limits;

function holder(): SlotHolder & { evictions: number } {
  return { evictions: 0, evict() { this.evictions++; } };
}

test('admission: prefixes are cached per address, the cache stays bounded and follows the prefix lengths', () => {
  const lim = { ...limits };
  const a = new Admission(lim);
  const cache = (a as unknown as { prefixes: Map<string, string> }).prefixes;
  assert.equal(a.prefixOf('192.0.2.77'), '192.0.2.0/24');
  assert.equal(cache.get('192.0.2.77'), '192.0.2.0/24'); // the second connection stage parses nothing
  for (let i = 0; i < 10_000; i++) {
    const ip = `10.${(i >> 8) & 255}.${i & 255}.1`;
    assert.equal(a.prefixOf(ip), `10.${(i >> 8) & 255}.${i & 255}.0/24`);
    assert.ok(cache.size <= 4096);
  }
  assert.equal(a.prefixOf('2001:db8:1:2:3:4:5:6'), '2001:db8:1:2::/64');
  assert.equal(a.prefixOf('not an address'), 'not an address');
  lim.limitPrefixV4 = 16;
  assert.equal(a.prefixOf('192.0.2.77'), '192.0.0.0/16');
});

test('admission: a lighter newcomer takes the heaviest source\'s oldest slot when the pool is full', () => {
  const a = new Admission({ ...limits, maxPendingHandshakes: 6, earlyDropStart: 6, maxPendingHandshakesPerIp: 16 }, () => 0.99);
  const heavy = Array.from({ length: 4 }, () => holder());
  heavy.forEach((h, i) => assert.ok(a.admit('pending', '192.0.2.1', h, i).ok));
  const light = [holder(), holder()];
  assert.ok(a.admit('pending', '198.51.100.1', light[0]!, 10).ok);
  assert.ok(a.admit('pending', '198.51.100.2', light[1]!, 11).ok);
  // Full (6). A newcomer holding nothing: the source with 4 gives up its oldest.
  const r = a.admit('pending', '203.0.113.9', holder(), 12);
  assert.ok(r.ok && r.evicted);
  assert.equal(r.evicted.ip, '192.0.2.1');
  assert.equal(heavy[0]!.evictions, 1, 'the oldest of the heaviest');
  assert.equal(heavy[1]!.evictions, 0);
  // The heaviest itself asking for more of a full pool is refused, and so is a per-address excess.
  assert.deepEqual(a.admit('pending', '192.0.2.1', holder(), 13), { ok: false, reason: 'pool-full' });
  const b = new Admission({ ...limits, maxPendingHandshakesPerIp: 2, maxPendingHandshakesPerPrefix: 3 });
  assert.ok(b.admit('pending', '192.0.2.1', holder(), 0).ok && b.admit('pending', '192.0.2.1', holder(), 0).ok);
  assert.deepEqual(b.admit('pending', '192.0.2.1', holder(), 0), { ok: false, reason: 'per-address' });
  assert.ok(b.admit('pending', '192.0.2.2', holder(), 0).ok);
  assert.deepEqual(b.admit('pending', '192.0.2.3', holder(), 0), { ok: false, reason: 'per-prefix' }, 'the /24 holds 3');
  assert.ok(b.admit('pending', '192.0.3.1', holder(), 0).ok, 'another /24 is unaffected');
});

test('admission: random early drop between start and full hits the heaviest sources', () => {
  let draws = 0;
  const a = new Admission({ ...limits, maxPendingHandshakes: 10, earlyDropStart: 4, earlyDropRate: 0.5 }, () => (draws++, 0.6));
  for (let i = 0; i < 4; i++) assert.ok(a.admit('pending', `192.0.2.${i + 1}`, holder(), i).ok, 'below start: no draw');
  assert.equal(draws, 0);
  // At 4 of 10 the drop probability is 0.5; a draw of 0.6 admits. At 6 of 10 it is 0.5 + 0.5 * 2/6.
  assert.ok(a.admit('pending', '192.0.2.9', holder(), 5).ok);
  assert.ok(a.admit('pending', '192.0.2.10', holder(), 6).ok);
  assert.deepEqual(a.admit('pending', '192.0.2.11', holder(), 7), { ok: false, reason: 'early-drop' });
});

async function connectAll(port: number, fingerprint: string, from: (i: number) => string, n: number): Promise<Connection[]> {
  const out: Connection[] = [];
  for (let i = 0; i < n; i++) {
    try {
      out.push(await connect({ host: '127.0.0.1', port, fingerprint, localAddress: from(i) }));
    } catch {
      // refused at a limit
    }
  }
  return out;
}

async function alive(conns: Connection[]): Promise<number> {
  const r = await Promise.allSettled(conns.map((c) => c.ping()));
  return r.filter((x) => x.status === 'fulfilled').length;
}

test('one address (or one /24) holding sessions that never log in cannot keep another address out', { timeout: 60_000 }, async () => {
  const td = await startDaemon({ limits: { maxConnections: 24, maxPreLoginPerIp: 8, maxPreLoginPerPrefix: 16 } });
  const held: Connection[] = [];
  try {
    // The case: one address completes 40 handshakes and never logs in.
    held.push(...(await connectAll(td.port, td.fingerprint, () => '127.0.46.1', 40)));
    await waitUntil(() => td.daemon.preLoginSessions <= 8 && td.daemon.connectionCount <= 8, 10_000, 'the excess closed');
    assert.ok((await alive(held)) <= 8, 'at most maxPreLoginPerIp sessions of one address stay');
    assert.ok(td.violations.some((v) => v.ip === '127.0.46.1' && v.kind === 'limit'), 'refusals at the limit are violations');
    // Many addresses of one /24 are held to the prefix limit.
    held.push(...(await connectAll(td.port, td.fingerprint, (i) => `127.0.46.${10 + i}`, 30)));
    await waitUntil(() => td.daemon.preLoginSessions <= 16, 10_000, 'the /24 held to its limit');
    const other = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.47.1' });
    try {
      assert.ok((await other.ping()) >= 0, 'another address still connects');
    } finally {
      await other.close();
    }
  } finally {
    await Promise.allSettled(held.map((c) => c.close()));
    await td.stop();
  }
});

test('a session that never logs in is closed at the login deadline; pings do not extend it', { timeout: 30_000 }, async () => {
  const td = await startDaemon({ limits: { loginTimeoutMs: 400 } });
  const c = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.48.1' });
  try {
    let pings = 0;
    const deadline = Date.now() + 20_000;
    while (!c.closed && Date.now() < deadline) {
      try {
        await c.ping();
        pings++;
      } catch {
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(c.closed, 'closed although it kept pinging');
    assert.ok(pings >= 1);
    await waitUntil(() => td.daemon.connectionCount === 0, 5000, 'the server side closed');
    assert.equal(td.violations.length, 0, 'not a violation: a member may just be slow');
  } finally {
    await c.close().catch(() => undefined);
    await td.stop();
  }
});

test('a record dripped one byte at a time is cut at its deadline (violation slow)', { timeout: 30_000 }, async () => {
  const td = await startDaemon({ limits: { recordTimeoutMs: 500 } });
  const s = await rawHandshake(td.port, td.fingerprint, { localAddress: '127.0.49.1' });
  try {
    await waitUntil(() => td.daemon.pendingHandshakes === 0, 5000, 'established');
    // A full-size record announced, then one byte per tick: every byte would restart an idle timer.
    const header = Buffer.alloc(5);
    header[0] = RECORD_DATA;
    header.writeUInt32BE(65536 + 16, 1);
    await s.raw.write(header);
    let sent = 0;
    const stop = Date.now() + 20_000;
    while (!s.raw.closed && Date.now() < stop) {
      await s.raw.write(Buffer.from([0x41])).catch(() => undefined);
      sent++;
      await s.raw.waitData(100);
    }
    assert.ok(s.raw.closed, `cut after ${sent} bytes`);
    const v = await td.waitForViolation((e) => e.ip === '127.0.49.1');
    assert.equal(v.kind, 'slow');
  } finally {
    s.raw.destroy();
    await td.stop();
  }
});

test('a ClientHello cut short ("CM", 40 of 75 bytes) and closed counts as handshake, not protocol', { timeout: 30_000 }, async () => {
  const td = await startDaemon();
  try {
    const session = new ClientSession({ acceptServerKey: pinFingerprint(td.fingerprint) });
    session.start();
    const hello = Buffer.concat(session.takeOutput());
    assert.equal(hello.length, CLIENT_HELLO_LEN);
    for (const [ip, bytes] of [['127.0.50.1', hello.subarray(0, 40)], ['127.0.50.2', Buffer.from('CM')]] as const) {
      const r = await RawSocket.open(td.port, ip);
      await r.write(bytes);
      r.socket.end();
      const v = await td.waitForViolation((e) => e.ip === ip);
      assert.equal(v.kind, 'handshake', ip);
      r.destroy();
    }
  } finally {
    await td.stop();
  }
});

test('the refusal bytes: encode and decode, and nothing else is taken for one', () => {
  const until = Date.UTC(2026, 10, 30, 7, 0, 0);
  const b = encodeRefusal({ code: 'BANNED', until });
  assert.equal(b.toString('latin1'), 'CMSP-REFUSED BANNED 2026-11-30T07:00:00.000Z\n');
  assert.deepEqual(decodeRefusal(b), { code: 'BANNED', until });
  assert.equal(decodeRefusal(b.subarray(0, 10)), 'need-data');
  assert.deepEqual(decodeRefusal(encodeRefusal({ code: 'BUSY' })), { code: 'BUSY' });
  assert.equal(decodeRefusal(Buffer.from([0x02, 0x02, 0x68])), undefined, 'a ServerHello');
  assert.equal(decodeRefusal(Buffer.from('CMSP-REFUSED NOPE\n')), undefined);
  assert.equal(decodeRefusal(Buffer.from(`CMSP-REFUSED BANNED ${'x'.repeat(80)}`)), undefined, 'bounded');
});

test('a banned client reads BANNED and the end of the ban, in the SDK and the commusic CLI', { timeout: 60_000 }, async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'commusic-refusal-'));
  const server = await startServer(configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'error', health: { enabled: false } }), { logger: nullLogger() });
  try {
    const port = server.daemon.address().port;
    const ban = bansAdd({ table: server.banSystem.table }, { address: '127.0.51.1', duration: '2h', reason: 'test' });
    const err = await connect({ host: '127.0.0.1', port, fingerprint: server.identity.fingerprint, localAddress: '127.0.51.1' }).then(
      () => assert.fail('connected although banned'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ClientError);
    assert.equal(err.code, 'BANNED');
    assert.equal(err.until, Date.parse(ban.expires));
    assert.match(err.message, new RegExp(`this address is banned until ${ban.expires.replace(/[.]/g, '\\.')}; ask your club's operator`));
    // The CLI: commusic ping from the banned address (--bind picks the source address).
    const bin = new URL('../bin/commusic.js', import.meta.url).pathname;
    const out = await new Promise<{ code: number; stderr: string }>((resolve) => {
      execFile(process.execPath, [bin, '--server', `127.0.0.1:${port}`, '--fingerprint', server.identity.fingerprint, '--bind', '127.0.51.1', 'ping'], { timeout: 30_000 }, (e, _o, stderr) =>
        resolve({ code: e ? ((e as { code?: number }).code ?? 1) : 0, stderr }),
      );
    });
    assert.notEqual(out.code, 0);
    assert.match(out.stderr, /this address is banned until \d{4}-\d\d-\d\dT[\d:.]+Z; ask your club's operator \[BANNED\]/);
    assert.ok(server.daemon.stats.refusedBanned >= 2);
    assert.equal(server.daemon.stats.hellos, 0, 'no handshake work for a banned source');
  } finally {
    await server.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('a connection Node drops past maxConnections is a limit refusal too', { timeout: 30_000 }, async () => {
  const td = await startDaemon({ limits: { maxConnections: 2 } });
  const held = [await RawSocket.open(td.port, '127.0.52.1'), await RawSocket.open(td.port, '127.0.52.2')];
  try {
    await waitUntil(() => td.daemon.connectionCount === 2, 5000, 'two connections');
    const extra = await RawSocket.open(td.port, '127.0.52.3');
    const v = await td.waitForViolation((e) => e.ip === '127.0.52.3');
    assert.equal(v.kind, 'limit');
    assert.equal(td.daemon.stats.refusedLimit, 1);
    extra.destroy();
  } finally {
    for (const s of held) s.destroy();
    await td.stop();
  }
});
