import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { BanStore } from '../storage/bans/ban-store.js';

const dirs: string[] = [];
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'commusic-bans-'));
  dirs.push(d);
  return d;
}
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

const T0 = Date.UTC(2025, 0, 1);
const HOUR = 3_600_000;

test('bans survive reopening the store and expire on time', () => {
  const dir = tempDir();
  let store = BanStore.openInDir(dir);
  store.add(
    {
      address: '127.0.0.9',
      expires: T0 + HOUR,
      reason: 'http: GET request',
      source: 'auto',
      level: 1,
      violations: [{ kind: 'http', time: T0, detail: 'GET request', user: 'anna', club: 'mv-1' }],
    },
    T0,
  );
  store.add({ address: '2001:db8:1:2::/64', expires: T0 + 2 * HOUR, reason: 'tls', source: 'auto', level: 1 }, T0);
  store.close();

  store = BanStore.openInDir(dir);
  try {
    assert.equal(store.check('127.0.0.9', T0 + 1)?.address, '127.0.0.9');
    assert.equal(store.check('::ffff:127.0.0.9', T0 + 1)?.address, '127.0.0.9');
    assert.equal(store.check('2001:db8:1:2:aaaa::1', T0 + 1)?.address, '2001:db8:1:2::/64');
    assert.equal(store.check('2001:db8:1:3::1', T0 + 1), undefined);
    const list = store.list(T0 + 1);
    assert.equal(list.length, 2);
    const v4 = list.find((b) => b.address === '127.0.0.9')!;
    assert.deepEqual(v4.violations, [{ kind: 'http', time: T0, detail: 'GET request', user: 'anna', club: 'mv-1' }]);
    assert.equal(store.offender('127.0.0.9')?.level, 1);

    // Expiry: the instant `expires` is reached the ban no longer holds, no sweep needed.
    assert.ok(store.check('127.0.0.9', T0 + HOUR - 1));
    assert.equal(store.check('127.0.0.9', T0 + HOUR), undefined);
    assert.equal(store.list(T0 + HOUR).length, 1);
    assert.equal(store.purgeExpired(T0 + HOUR), 1);
    assert.equal(store.size, 1);
  } finally {
    store.close();
  }
  store = BanStore.openInDir(dir);
  try {
    assert.equal(store.size, 1, 'the purge was persisted');
    assert.equal(store.offender('127.0.0.9')?.level, 1, 'offender history outlives the ban');
  } finally {
    store.close();
  }
});

test('a manual CIDR ban blocks every address in it, v4 and v6', () => {
  const store = BanStore.openInDir(tempDir());
  try {
    store.add({ address: '127.0.8.0/22', expires: T0 + HOUR, reason: 'scanner', source: 'manual' }, T0);
    store.add({ address: '2001:db8::/32', expires: T0 + HOUR, reason: 'abuse', source: 'manual' }, T0);
    for (let third = 8; third < 12; third++) {
      for (let fourth = 0; fourth < 256; fourth++) {
        assert.ok(store.check(`127.0.${third}.${fourth}`, T0), `127.0.${third}.${fourth}`);
      }
    }
    assert.equal(store.check('127.0.7.255', T0), undefined);
    assert.equal(store.check('127.0.12.0', T0), undefined);
    assert.ok(store.check('2001:db8:ffff:ffff::1', T0));
    assert.equal(store.check('2001:db9::1', T0), undefined);
    assert.throws(() => store.remove('127.0.9.1/22'), { code: 'BAN_HOST_BITS' }, 'a range with host bits is refused, not guessed');
    assert.ok(store.remove('127.0.8.0/22'));
    assert.equal(store.check('127.0.9.1', T0), undefined);
    assert.equal(store.remove('127.0.8.0/22'), false);
  } finally {
    store.close();
  }
});

test('violations per ban are bounded, the count is not', () => {
  const store = BanStore.openInDir(tempDir(), { maxViolationsPerBan: 5 });
  try {
    store.add({ address: '127.0.0.2', expires: T0 + HOUR, reason: 'x', source: 'auto', level: 1 }, T0);
    for (let i = 0; i < 50; i++) store.recordViolation('127.0.0.2', { kind: 'garbage', time: T0 + i, detail: `#${i}` });
    const [b] = store.list(T0);
    assert.equal(b!.violationCount, 50);
    assert.equal(b!.violations.length, 5);
    assert.equal(b!.violations[0]!.detail, '#0');
  } finally {
    store.close();
  }
});

test('exempt list persists and matches ranges', () => {
  const dir = tempDir();
  let store = BanStore.openInDir(dir);
  store.exemptAdd('127.0.5.0/24', 'office', T0);
  store.close();
  store = BanStore.openInDir(dir);
  try {
    assert.equal(store.exemptMatch('127.0.5.77')?.address, '127.0.5.0/24');
    assert.equal(store.exemptMatch('127.0.6.1'), undefined);
    assert.deepEqual(store.exemptList(), [{ address: '127.0.5.0/24', note: 'office', created: T0 }]);
    assert.ok(store.exemptRemove('127.0.5.0/24'));
    assert.equal(store.exemptMatch('127.0.5.77'), undefined);
  } finally {
    store.close();
  }
});

test('with a key the file is page-encrypted and unreadable without it', () => {
  const dir = tempDir();
  const key = Buffer.alloc(32, 0x5a);
  let store = BanStore.openInDir(dir, { key });
  store.add({ address: '198.51.100.77', expires: T0 + HOUR, reason: 'ssh banner', source: 'auto', level: 1 }, T0);
  store.close();
  const file = path.join(dir, 'bans.db');
  assert.equal(fs.readFileSync(file).includes('198.51.100.77'), false);
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  assert.throws(() => BanStore.openInDir(dir));
  assert.throws(() => BanStore.openInDir(dir, { key: Buffer.alloc(32, 1) }));
  store = BanStore.openInDir(dir, { key });
  try {
    assert.equal(store.check('198.51.100.77', T0)?.reason, 'ssh banner');
  } finally {
    store.close();
  }
});
