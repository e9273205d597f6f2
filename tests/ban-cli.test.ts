import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

/**
 * Issue 11 point 4 through `commusicctl bans` on a data folder (no daemon): the refusals an
 * operator sees, `remove` naming the covering range, and `check`.
 */
const bin = new URL('../bin/commusicctl.js', import.meta.url).pathname;
function ctl(dir: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, '--data', dir, 'bans', ...args], { timeout: 60_000 }, (e, stdout, stderr) =>
      resolve({ code: e ? ((e as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

test('commusicctl bans: host bits, wide ranges, units, exemptions, remove inside a range, check', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-ban-cli-'));
  try {
    const init = await new Promise<number>((resolve) => execFile(process.execPath, [bin, '--data', dir, 'keys', 'init'], { timeout: 60_000 }, (e) => resolve(e ? 1 : 0)));
    assert.equal(init, 0);
    let r = await ctl(dir, ['add', '10.0.0.1/8', '--for', '1h', '--reason', 'x']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /10\.0\.0\.1\/8 has host bits set: the range is 10\.0\.0\.0\/8.*\[BAN_HOST_BITS\]/);
    r = await ctl(dir, ['add', '0.0.0.0/0', '--for', '1h', '--reason', 'x']);
    assert.match(r.stderr, /every IPv4 client.*--yes.*\[BAN_WIDE_RANGE\]/);
    r = await ctl(dir, ['add', '192.0.2.1', '--for', '2', '--reason', 'x']);
    assert.match(r.stderr, /"2" has no unit.*\[BAN_BAD_DURATION\]/);
    assert.equal((await ctl(dir, ['exempt', 'add', '203.0.113.0/24', '--note', 'office'])).code, 0);
    r = await ctl(dir, ['add', '203.0.113.7', '--for', '1h', '--reason', 'x']);
    assert.match(r.stderr, /exempt \(203\.0\.113\.0\/24: office\).*\[BAN_EXEMPT\]/);
    r = await ctl(dir, ['add', '203.0.0.0/16', '--for', '1h', '--reason', 'x']);
    assert.match(r.stderr, /--force.*\[BAN_EXEMPT\]/);
    r = await ctl(dir, ['add', '203.0.0.0/16', '--for', '1h', '--reason', 'x', '--force']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /exempt 203\.0\.113\.0\/24 stay admitted/);
    r = await ctl(dir, ['remove', '203.0.5.5']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /no ban on 203\.0\.5\.5; it lies inside the ban on 203\.0\.0\.0\/16 \(until [^)]+\): lift that with "bans remove 203\.0\.0\.0\/16"/);
    r = await ctl(dir, ['check', '203.0.5.5']);
    assert.match(r.stdout, /^203\.0\.5\.5: BANNED\n {2}banned by 203\.0\.0\.0\/16 until \d{4}-[\d-]+T[\d:.]+Z \(manual: x\)/);
    r = await ctl(dir, ['check', '203.0.113.7']);
    assert.match(r.stdout, /admitted \(exempt\)[\s\S]*exempt by 203\.0\.113\.0\/24 \(office\)[\s\S]*the exemption wins over the ban/);
    r = await ctl(dir, ['check', '198.51.100.1', '--json']);
    assert.deepEqual(JSON.parse(r.stdout), { address: '198.51.100.1', verdict: 'admitted', ban: null, exempt: null });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
