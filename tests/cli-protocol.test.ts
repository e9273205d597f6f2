import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { startDaemon, type TestDaemon } from './helpers/daemon.js';

/**
 * `commusic` and protocol versions (PROTOCOL.md 3.5, 8): version 3 by default, `--max-protocol`
 * for servers that predate it, anything but 1..3 refused as a usage error.
 */
const bin = new URL('../bin/commusic.js', import.meta.url).pathname;

function commusic(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

let td: TestDaemon | undefined;
after(async () => td?.stop());

test('commusic ping --json names the protocol version: 3 by default, 2 with --max-protocol 2; --max-protocol 4 is a usage error', { timeout: 100_000 }, async () => {
  td = await startDaemon();
  const base = ['--server', `127.0.0.1:${td.port}`, '--fingerprint', td.fingerprint, '--bind', '127.0.33.1'];
  const [v3, v2, bad] = await Promise.all([
    commusic([...base, 'ping', '--json']),
    commusic([...base, '--max-protocol', '2', 'ping', '--json']),
    commusic([...base, '--max-protocol', '4', 'ping']),
  ]);
  assert.equal(v3.code, 0, v3.stderr);
  assert.equal((JSON.parse(v3.stdout) as { protocolVersion: number }).protocolVersion, 3);
  assert.equal(v2.code, 0, v2.stderr);
  assert.equal((JSON.parse(v2.stdout) as { protocolVersion: number }).protocolVersion, 2);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /--max-protocol is 1, 2 or 3/);
  assert.deepEqual(td.violations.filter((v) => v.ip === '127.0.33.1'), []);
});
