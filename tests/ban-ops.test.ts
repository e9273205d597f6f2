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
} from '../daemon/ban-ops.js';
import { BanEngine } from '../daemon/ban-engine.js';
import { BanStore } from '../storage/ban-store.js';

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
    assert.deepEqual(bansRemove(ctx, { address: '127.0.10.77/24' }), { address: '127.0.10.0/24', removed: true });
    assert.equal(bansCheck(ctx, { address: '127.0.10.1' }).ban, null);
    assert.deepEqual(bansRemove(ctx, { address: '127.0.10.0/24' }), { address: '127.0.10.0/24', removed: false });

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
