import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  PrefixMap,
  canonicalPrefix,
  formatAddress,
  parseAddress,
  parsePrefix,
  BanAddressError,
} from '../storage/bans/ban-address.js';

test('IPv4, IPv6 and IPv4-mapped IPv6 parse to one canonical form', () => {
  assert.deepEqual(parseAddress('192.0.2.7'), { family: 4, value: 0xc0000207 });
  assert.deepEqual(parseAddress('::ffff:192.0.2.7'), { family: 4, value: 0xc0000207 });
  assert.deepEqual(parseAddress('::ffff:c000:207'), { family: 4, value: 0xc0000207 });
  assert.equal(formatAddress(parseAddress('2001:DB8:0:0:1:0:0:1')!), '2001:db8::1:0:0:1');
  assert.equal(formatAddress(parseAddress('fe80::1%eth0')!), 'fe80::1');
  assert.equal(formatAddress(parseAddress('::')!), '::');
  assert.equal(formatAddress(parseAddress('[::1]')!), '::1');
  for (const bad of ['', '1', '127.1', '1.2.3', '1.2.3.4.5', '256.1.1.1', '01.2.3.4', '0x7f.0.0.1', '::ffff:127.1', 'example.org', '1::2::3', ':::']) {
    assert.equal(parseAddress(bad), undefined, bad);
  }
});

test('prefixes print canonically; host bits are refused unless asked to clear them', () => {
  assert.throws(() => canonicalPrefix('10.0.0.1/8'), { code: 'BAN_HOST_BITS', message: /the range is 10\.0\.0\.0\/8/ });
  assert.throws(() => parsePrefix('2001:db8::1/64'), { code: 'BAN_HOST_BITS' });
  assert.deepEqual(parsePrefix('10.1.2.3/8', { strict: false }), parsePrefix('10.0.0.0/8'));
  assert.equal(canonicalPrefix('10.0.0.0/8'), '10.0.0.0/8');
  assert.equal(canonicalPrefix('10.1.2.3/32'), '10.1.2.3');
  assert.equal(canonicalPrefix('2001:db8:1:2:0:0:0:0/64'), '2001:db8:1:2::/64');
  assert.equal(canonicalPrefix('::ffff:10.0.0.0/104'), '10.0.0.0/8');
  assert.equal(canonicalPrefix('0.0.0.0/0'), '0.0.0.0/0');
  for (const bad of ['10.0.0.0/33', '::/129', '10.0.0.0/', '10.0.0.0/x', 'fe80::1%eth0/64', 'nope']) {
    assert.throws(() => parsePrefix(bad), BanAddressError, bad);
  }
});

test('IPv6 text round-trips through parse and format (property)', () => {
  fc.assert(
    fc.property(fc.ipV6(), (ip) => {
      const a = parseAddress(ip);
      assert.ok(a, ip);
      const again = parseAddress(formatAddress(a));
      assert.deepEqual(again, a);
    }),
    { numRuns: 500 },
  );
  fc.assert(
    fc.property(fc.ipV4(), (ip) => {
      assert.equal(formatAddress(parseAddress(ip)!), ip);
    }),
  );
});

test('PrefixMap finds the most specific accepted entry', () => {
  const m = new PrefixMap<string>();
  m.set(parsePrefix('10.0.0.0/8'), 'wide');
  m.set(parsePrefix('10.1.0.0/16'), 'narrow');
  m.set(parsePrefix('2001:db8::/32'), 'v6');
  assert.equal(m.match(parseAddress('10.1.2.3')!), 'narrow');
  assert.equal(m.match(parseAddress('10.1.2.3')!, (v) => v !== 'narrow'), 'wide');
  assert.equal(m.match(parseAddress('10.2.0.1')!), 'wide');
  assert.equal(m.match(parseAddress('11.0.0.1')!), undefined);
  assert.equal(m.match(parseAddress('2001:db8:ffff::1')!), 'v6');
  assert.equal(m.match(parseAddress('::ffff:10.9.9.9')!), 'wide');
  assert.equal(m.size, 3);
  assert.ok(m.delete(parsePrefix('10.1.0.0/16')));
  assert.equal(m.match(parseAddress('10.1.2.3')!), 'wide');
  assert.equal(m.size, 2);
});

test('one address parser: the ban table, the ban policy and the health allow list agree', async () => {
  const { CidrSchema } = await import('../daemon/bans/ban-policy.js');
  const { loadConfig } = await import('../daemon/main/config.js');
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'cm-parse-'));
  const file = join(dir, 'config.json');
  const samples = ['10.0.0.0/8', '10.0.0.1/8', '127.1', '0x7f.0.0.1', '2001:db8::/32', '2001:db8::1/32', '::ffff:10.0.0.0/104', '192.0.2.7', 'fe80::1%eth0', '1.2.3.4/33'];
  for (const s of samples) {
    let table = true;
    try {
      parsePrefix(s);
    } catch {
      table = false;
    }
    assert.equal(CidrSchema.safeParse(s).success, table, `ban policy vs table on ${s}`);
    let health = true;
    try {
      writeFileSync(file, JSON.stringify({ health: { allowCidrs: [s] } }));
      loadConfig({ file, env: {} });
    } catch {
      health = false;
    }
    assert.equal(health, table, `health allow list vs table on ${s}`);
  }
  rmSync(dir, { recursive: true, force: true });
});
