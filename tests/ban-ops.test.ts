import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import {
  BanAddressError,
  DurationError,
  bansAdd,
  bansCheck,
  bansList,
  bansRemove,
  exemptAdd,
  exemptList,
  exemptRemove,
} from '../daemon/bans/ban-ops.js';
import { BanEngine } from '../daemon/bans/ban-engine.js';
import { BanStore } from '../storage/bans/ban-store.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'commusic-banops-'));
  dirs.push(d);
  return d;
}

const T0 = Date.UTC(2025, 0, 1);
const now = () => T0;

test('bans add/list/remove on a live table, JSON-serialisable', () => {
  const table = BanStore.openInDir(tempDir());
  try {
    const ctx = { table, now };
    const engine = new BanEngine({ table, purgeEvery: 0 });
    engine.handle({ ip: '127.0.9.1', kind: 'http', time: T0 - 1000, detail: 'HTTP GET' });
    const added = bansAdd(ctx, { address: '127.0.10.0/24', duration: '2h', reason: 'scanner range' });
    assert.equal(added.address, '127.0.10.0/24');
    assert.equal(added.expires, new Date(T0 + 2 * 3_600_000).toISOString());
    assert.equal(added.source, 'manual');

    const list = bansList(ctx);
    assert.deepEqual(JSON.parse(JSON.stringify(list)), list, 'plain JSON');
    assert.deepEqual(list.map((b) => b.address).sort(), ['127.0.10.0/24', '127.0.9.1']);
    const auto = list.find((b) => b.address === '127.0.9.1')!;
    assert.equal(auto.source, 'auto');
    assert.deepEqual(auto.violations, [{ kind: 'http', time: new Date(T0 - 1000).toISOString(), detail: 'HTTP GET' }]);

    for (let i = 0; i < 256; i++) assert.ok(bansCheck(ctx, { address: `127.0.10.${i}` }).ban);
    assert.deepEqual(bansRemove(ctx, { address: '127.0.10.0/24' }), { address: '127.0.10.0/24', removed: true, coveredBy: [] });
    assert.equal(bansCheck(ctx, { address: '127.0.10.1' }).ban, null);
    assert.deepEqual(bansRemove(ctx, { address: '127.0.10.0/24' }), { address: '127.0.10.0/24', removed: false, coveredBy: [] });

    assert.throws(() => bansAdd(ctx, { address: '127.0.10.0/33', duration: '1h' }), BanAddressError);
    assert.throws(() => bansAdd(ctx, { address: '127.0.10.1', duration: 'forever' }), DurationError);
    engine.close();
  } finally {
    table.close();
  }
});

test('offline: commands on the data folder are seen by the daemon table after reopen', () => {
  const dir = tempDir();
  const offline = BanStore.openInDir(dir);
  bansAdd({ table: offline, now }, { address: '2001:db8:5::/48', duration: '7d', reason: 'abuse report' });
  exemptAdd({ table: offline, now }, { address: '127.0.11.0/24', note: 'office' });
  offline.close();

  const live = BanStore.openInDir(dir);
  try {
    assert.equal(live.check('2001:db8:5:1::1', T0)?.reason, 'abuse report');
    assert.deepEqual(exemptList({ table: live }), [
      { address: '127.0.11.0/24', note: 'office', created: new Date(T0).toISOString() },
    ]);
    assert.deepEqual(exemptRemove({ table: live }, { address: '127.0.11.0/24' }), { address: '127.0.11.0/24', removed: true });
    assert.deepEqual(exemptList({ table: live }), []);
  } finally {
    live.close();
  }
});

test('operator bans: exemptions win over manual bans; a range holding exempt addresses needs --force', () => {
  const table = BanStore.openInDir(tempDir());
  try {
    const ctx = { table, now };
    table.setConfigExempt(['127.0.0.0/8']);
    table.exemptAdd('10.20.30.0/24', 'office', T0);
    // The case: 127.0.0.1 lies in the exempt 127.0.0.0/8.
    assert.throws(() => bansAdd(ctx, { address: '127.0.0.1', duration: '1h', reason: 'x' }), { code: 'BAN_EXEMPT', message: /127\.0\.0\.0\/8/ });
    assert.throws(() => bansAdd(ctx, { address: '127.0.0.1', duration: '1h', reason: 'x', force: true }), { code: 'BAN_EXEMPT' }, 'inside an exemption even --force is refused');
    assert.equal(bansList(ctx).length, 0);
    // A range containing an exemption: refused, then stored with --force, the exempt part admitted.
    assert.throws(() => bansAdd(ctx, { address: '10.20.0.0/16', duration: '1h', reason: 'x' }), { code: 'BAN_EXEMPT', message: /10\.20\.30\.0\/24.*--force/ });
    const b = bansAdd(ctx, { address: '10.20.0.0/16', duration: '1h', reason: 'x', force: true });
    assert.deepEqual(b.exemptInside, ['10.20.30.0/24']);
    assert.ok(table.check('10.20.31.1', T0), 'the rest of the range is banned');
    assert.equal(table.check('10.20.30.7', T0), undefined, 'the exempt part stays admitted');
    const c = bansCheck(ctx, { address: '10.20.30.7' });
    assert.equal(c.verdict, 'exempt');
    assert.equal(c.ban?.address, '10.20.0.0/16');
    assert.equal(c.exempt?.address, '10.20.30.0/24');
    // An automatic ban can never be made on an exempt source either (the engine skips it).
    const engine = new BanEngine({ table, purgeEvery: 0, policy: { exempt: ['127.0.0.0/8'] } });
    assert.equal(engine.handle({ ip: '127.0.0.9', kind: 'http', time: T0, detail: 'x' }).action, 'exempt');
    engine.close();
  } finally {
    table.close();
  }
});

test('operator bans: host bits refused, wide ranges need --yes, --for needs a unit', () => {
  const table = BanStore.openInDir(tempDir());
  try {
    const ctx = { table, now };
    assert.throws(() => bansAdd(ctx, { address: '10.0.0.1/8', duration: '1h', reason: 'x', yes: true }), { code: 'BAN_HOST_BITS', message: /10\.0\.0\.0\/8/ });
    for (const wide of ['0.0.0.0/0', '10.0.0.0/8', '172.16.0.0/15', '::/0', '2001:db8::/31']) {
      assert.throws(() => bansAdd(ctx, { address: wide, duration: '1h', reason: 'x' }), { code: 'BAN_WIDE_RANGE' }, wide);
    }
    assert.equal(bansList(ctx).length, 0, 'nothing stored without confirmation');
    assert.equal(bansAdd(ctx, { address: '0.0.0.0/0', duration: '1h', reason: 'x', yes: true }).address, '0.0.0.0/0');
    assert.equal(bansAdd(ctx, { address: '192.0.2.0/16'.replace('192.0.2.0', '192.0.0.0'), duration: '1h', reason: 'x' }).address, '192.0.0.0/16', '/16 needs no --yes');
    assert.equal(bansAdd(ctx, { address: '2001:db8::/32', duration: '1h', reason: 'x' }).address, '2001:db8::/32');
    for (const bare of ['2', '90', '1.5']) {
      assert.throws(() => bansAdd(ctx, { address: '192.0.2.1', duration: bare, reason: 'x' }), { code: 'BAN_BAD_DURATION', message: /no unit/ }, bare);
    }
    assert.equal(bansAdd(ctx, { address: '192.0.2.1', duration: '2h', reason: 'x' }).expires, new Date(T0 + 2 * 3_600_000).toISOString());
  } finally {
    table.close();
  }
});

test('operator bans: remove of an address inside a banned range names the range; check says until when', () => {
  const table = BanStore.openInDir(tempDir());
  try {
    const ctx = { table, now };
    bansAdd(ctx, { address: '198.51.100.0/24', duration: '7d', reason: 'abuse report' });
    const r = bansRemove(ctx, { address: '198.51.100.9' });
    assert.equal(r.removed, false);
    assert.deepEqual(r.coveredBy, [{ address: '198.51.100.0/24', expires: new Date(T0 + 7 * 86_400_000).toISOString(), reason: 'abuse report' }]);
    assert.ok(table.check('198.51.100.9', T0), 'still banned: nothing was lifted');
    const c = bansCheck(ctx, { address: '198.51.100.9' });
    assert.equal(c.verdict, 'banned');
    assert.deepEqual(c.ban, { address: '198.51.100.0/24', expires: new Date(T0 + 7 * 86_400_000).toISOString(), reason: 'abuse report', source: 'manual' });
    assert.equal(bansCheck(ctx, { address: '192.0.2.200' }).verdict, 'admitted');
    assert.throws(() => bansCheck(ctx, { address: '198.51.100.0/24' }), { code: 'BAN_NOT_AN_ADDRESS' });
  } finally {
    table.close();
  }
});
