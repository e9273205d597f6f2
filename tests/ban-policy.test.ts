import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { BanEngine } from '../daemon/bans/ban-engine.js';
import { banDuration, parseBanPolicy, parseDuration, DurationError } from '../daemon/bans/ban-policy.js';
import { ViolationBus, type ViolationEvent, type ViolationKind } from '../daemon/bans/violations.js';
import { BanStore } from '../storage/bans/ban-store.js';

const dirs: string[] = [];
const stores: BanStore[] = [];
function openStore(): BanStore {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'commusic-banpol-'));
  dirs.push(d);
  const s = BanStore.openInDir(d);
  stores.push(s);
  return s;
}
after(() => {
  for (const s of stores) s.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

const T0 = Date.UTC(2025, 0, 1);
const MIN = 60_000;
const HOUR = 60 * MIN;

function ev(ip: string, kind: ViolationKind, time: number, extra: Partial<ViolationEvent> = {}): ViolationEvent {
  return { ip, kind, time, detail: `${kind} test`, ...extra };
}

function engine(policy: object = {}) {
  const table = openStore();
  const bus = new ViolationBus();
  const e = new BanEngine({ table, bus, policy, purgeEvery: 0 });
  return { table, bus, e };
}

test('durations parse', () => {
  assert.equal(parseDuration('90s'), 90_000);
  assert.equal(parseDuration('15m'), 15 * MIN);
  assert.equal(parseDuration('2h'), 2 * HOUR);
  assert.equal(parseDuration('7d'), 7 * 24 * HOUR);
  assert.equal(parseDuration('1h30m'), 90 * MIN);
  for (const bad of ['', 'h', '5x', '-5m', '5m junk', '0s', '30', '2']) assert.throws(() => parseDuration(bad), DurationError, bad);
  assert.throws(() => parseBanPolicy({ banTime: 'soon' }));
  assert.throws(() => parseBanPolicy({ exempt: ['10.0.0.0/99'] }));
  assert.throws(() => parseBanPolicy({ kinds: { nosuch: { maxRetry: 1, findTime: '1m' } } }));
});

test('non-client traffic and rights violations ban at once', () => {
  const { table, bus, e } = engine();
  const bans: string[] = [];
  e.onBan((b) => bans.push(b.address));
  for (const [i, kind] of (['http', 'tls', 'ssh', 'garbage', 'silent', 'protocol', 'rights'] as const).entries()) {
    bus.report(ev(`127.0.1.${i + 1}`, kind, T0, kind === 'rights' ? { user: 'bob', club: 'mv-7', right: 'finance:write' } : {}));
  }
  assert.equal(bans.length, 7);
  for (let i = 1; i <= 7; i++) assert.ok(table.check(`127.0.1.${i}`, T0 + 1), `127.0.1.${i}`);
  const rights = table.list(T0).find((b) => b.address === '127.0.1.7')!;
  assert.deepEqual(rights.violations[0], { kind: 'rights', time: T0, detail: 'rights test', user: 'bob', club: 'mv-7', right: 'finance:write' });
  assert.equal(table.check('127.0.1.8', T0 + 1), undefined, 'other addresses keep working');
});

test('failed logins below the threshold do not ban; at the threshold they do; the window slides', () => {
  const { table, e } = engine({ kinds: { login: { maxRetry: 5, findTime: '10m' } } });
  const ip = '127.0.2.1';
  for (let i = 0; i < 4; i++) assert.equal(e.handle(ev(ip, 'login', T0 + i * MIN, { user: 'anna' })).action, 'counted');
  assert.equal(table.check(ip, T0 + 5 * MIN), undefined);
  // The first failure leaves the 10-minute window before the fifth arrives: still four.
  assert.equal(e.handle(ev(ip, 'login', T0 + 10 * MIN + 1)).action, 'counted');
  assert.equal(table.check(ip, T0 + 10 * MIN + 2), undefined);
  const out = e.handle(ev(ip, 'login', T0 + 10 * MIN + 2));
  assert.equal(out.action, 'banned');
  assert.ok(table.check(ip, T0 + 10 * MIN + 3));
  assert.equal(table.list(T0 + 10 * MIN + 3)[0]!.violations.length, 5);
  assert.equal(e.trackedSources, 0, 'the counter went with the ban');
  // Handshake failures count separately with their own threshold (3 by default).
  const { table: t2, e: e2 } = engine();
  e2.handle(ev('127.0.2.2', 'handshake', T0));
  e2.handle(ev('127.0.2.2', 'login', T0));
  e2.handle(ev('127.0.2.2', 'handshake', T0 + 1));
  assert.equal(t2.check('127.0.2.2', T0 + 2), undefined);
  assert.equal(e2.handle(ev('127.0.2.2', 'handshake', T0 + 2)).action, 'banned');
});

test('an exempt CIDR is never banned, from config or from the table', () => {
  const { table, e } = engine({ exempt: ['127.0.3.0/24', '2001:db8:e::/48'] });
  table.exemptAdd('127.0.4.0/24', 'vpn', T0);
  for (let i = 0; i < 100; i++) {
    assert.equal(e.handle(ev(`127.0.3.${i}`, 'http', T0 + i)).action, 'exempt');
    assert.equal(e.handle(ev(`127.0.4.${i}`, 'rights', T0 + i)).action, 'exempt');
    assert.equal(e.handle(ev(`::ffff:127.0.3.${i}`, 'garbage', T0 + i)).action, 'exempt');
    assert.equal(e.handle(ev(`2001:db8:e:${i.toString(16)}::1`, 'tls', T0 + i)).action, 'exempt');
  }
  assert.equal(table.list(T0 + 200).length, 0);
});

test('repeat offenders get longer bans, capped; history is forgotten after forgetAfter', () => {
  const policy = { banTime: '1h', banTimeFactor: 4, maxBanTime: '2d', forgetAfter: '30d' };
  const { table, e } = engine(policy);
  const ip = '127.0.5.5';
  const lengths: number[] = [];
  let now = T0;
  for (let n = 0; n < 6; n++) {
    const out = e.handle(ev(ip, 'garbage', now));
    assert.equal(out.action, 'banned');
    if (out.action !== 'banned') return;
    lengths.push(out.ban.expires - now);
    now = out.ban.expires + MIN; // the ban ran out; the source comes back
  }
  assert.deepEqual(lengths, [1 * HOUR, 4 * HOUR, 16 * HOUR, 48 * HOUR, 48 * HOUR, 48 * HOUR]);
  assert.equal(table.offender(ip)?.level, 6);
  const later = e.handle(ev(ip, 'garbage', now + 31 * 24 * HOUR));
  assert.ok(later.action === 'banned' && later.ban.expires - (now + 31 * 24 * HOUR) === HOUR && later.ban.level === 1);
  assert.equal(banDuration(parseBanPolicy(policy), 'garbage', 100), 48 * HOUR);
});

test('IPv6 addresses in one /64 share a ban and a counter; another /64 does not', () => {
  const { table, e } = engine();
  const net = '2001:db8:aa:bb';
  // Three handshake failures from three addresses of one /64 ban the /64.
  e.handle(ev(`${net}::1`, 'handshake', T0));
  e.handle(ev(`${net}:1::2`, 'handshake', T0 + 1));
  const out = e.handle(ev(`${net}:ffff:ffff:ffff:ffff`, 'handshake', T0 + 2));
  assert.equal(out.action, 'banned');
  assert.equal(table.check(`${net}:1234::99`, T0 + 3)?.address, '2001:db8:aa:bb::/64');
  assert.equal(table.check('2001:db8:aa:bc::1', T0 + 3), undefined);
  // A configurable prefix: /48.
  const { table: t48, e: e48 } = engine({ ipv6Prefix: 48 });
  e48.handle(ev('2001:db8:cc:1::1', 'tls', T0));
  assert.equal(t48.check('2001:db8:cc:ffff::1', T0 + 1)?.address, '2001:db8:cc::/48');
});

test('IPv4-mapped IPv6 sources are IPv4 sources', () => {
  const { table, e } = engine();
  e.handle(ev('::ffff:127.0.6.1', 'ssh', T0));
  assert.equal(table.check('127.0.6.1', T0 + 1)?.address, '127.0.6.1');
  assert.equal(e.handle(ev('127.0.6.1', 'ssh', T0 + 2)).action, 'already-banned');
});

test('a flood from many sources keeps the counter map bounded', () => {
  const { e } = engine({ maxTrackedSources: 100, kinds: { login: { maxRetry: 50, findTime: '1h' } } });
  for (let i = 0; i < 5000; i++) e.handle(ev(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, 'login', T0 + i));
  assert.equal(e.trackedSources, 100);
  e.purge(T0 + 2 * HOUR);
  assert.equal(e.trackedSources, 0);
});

test('unparsable addresses are logged and ignored; a disabled policy logs only', () => {
  const { table, e } = engine({ enabled: false });
  assert.deepEqual(e.handle(ev('not-an-ip', 'http', T0)), { action: 'ignored', reason: 'bad-address' });
  assert.equal(e.handle(ev('127.0.7.1', 'http', T0)).action, 'logged');
  assert.equal(table.list(T0).length, 0);
});

test('every violation and ban reaches the security log with user and club, never as a key field', async () => {
  const lines: Record<string, unknown>[] = [];
  const { default: winston } = await import('winston');
  const { Writable } = await import('node:stream');
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(JSON.parse(String(chunk)) as Record<string, unknown>);
      cb();
    },
  });
  const logger = winston.createLogger({ format: winston.format.json(), transports: [new winston.transports.Stream({ stream: sink })] });
  const table = openStore();
  const e = new BanEngine({ table, logger, purgeEvery: 0 });
  e.handle(ev('127.0.8.1', 'rights', T0, { user: 'carl', club: 'club-42', command: 'member.delete', right: 'members:delete' }));
  await new Promise((r) => setImmediate(r));
  const v = lines.find((l) => l.event === 'violation')!;
  const b = lines.find((l) => l.event === 'ban')!;
  assert.equal(v.user, 'carl');
  assert.equal(v.club, 'club-42');
  assert.equal(v.right, 'members:delete');
  assert.equal(b.address, '127.0.8.1');
  assert.equal(b.user, 'carl');
  logger.close();
});
