// Issue 10, must-show 5: a data folder others can write to (mode 0777) or that another account
// owns stops the daemon with a message saying how to fix it; commusicctl refuses a control
// socket owned by another user before sending anything.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer } from '../daemon/main/main.js';
import { loadConfig } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { callControl } from '../daemon/ops/control-socket.js';
import { assertSafeDataDir } from '../daemon/main/folder-safety.js';

const isRoot = process.geteuid?.() === 0;
const OTHER_UID = 65534;

test('a data folder with mode 0777, or owned by another account, stops the daemon with a clear message', { timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-strict-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const dataDir = join(dir, 'data');
  mkdirSync(dataDir, { mode: 0o700 });
  chmodSync(dataDir, 0o777);
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({ health: { enabled: false } }));
  await assert.rejects(startServer(loadConfig({ file, flags: { dataDir, listen: '127.0.0.1:0' } }), { logger: nullLogger() }), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'DATA_DIR_UNSAFE');
    assert.match(e.message, /mode 0777/);
    assert.match(e.message, new RegExp(`chmod 700 ${dataDir}`));
    return true;
  });
  assert.equal(existsSync(join(dataDir, 'keys')), false, 'nothing was created in the unsafe folder');
  chmodSync(dataDir, 0o770);
  assert.throws(() => assertSafeDataDir(dataDir), /mode 0770/);
  chmodSync(dataDir, 0o700);
  assertSafeDataDir(dataDir);
  // Owned by another account.
  if (isRoot) chownSync(dataDir, OTHER_UID, OTHER_UID);
  assert.throws(() => assertSafeDataDir(dataDir, isRoot ? 0 : (process.geteuid?.() ?? 0) + 1), (e: Error & { code?: string }) => e.code === 'DATA_DIR_UNSAFE' && /owned by uid/.test(e.message) && /chown/.test(e.message));
  // A folder above the data folder that others can write to (not sticky).
  const parent = join(dir, 'open');
  mkdirSync(join(parent, 'data'), { recursive: true, mode: 0o700 });
  chmodSync(parent, 0o777);
  assert.throws(() => assertSafeDataDir(join(parent, 'data')), /above the data folder is writable by group or others/);
});

test('commusicctl refuses a control socket owned by another user and sends nothing', { timeout: 30_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-sock-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o700);
  const sock = join(dir, 'control.sock');
  let received = 0;
  const server = createServer((s) => {
    s.on('data', () => {
      received++;
      s.end(`${JSON.stringify({ id: 1, ok: true, result: 'pong' })}\n`);
    });
  });
  await new Promise<void>((r) => server.listen(sock, r));
  t.after(() => server.close());
  // Our own socket: answered.
  assert.deepEqual(await callControl(sock, 'status', {}), { result: 'pong' });
  assert.equal(received, 1);
  // Owned by another account (really chowned when root; else the trusted uid is someone else).
  if (isRoot) chownSync(sock, OTHER_UID, OTHER_UID);
  const trusted = isRoot ? undefined : [(process.geteuid?.() ?? 0) + 1];
  await assert.rejects(callControl(sock, 'backup.verify', { passphrase: 'club secret passphrase' }, 5_000, trusted), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'CONTROL_SOCKET_UNSAFE');
    assert.match(e.message, /owned by uid/);
    return true;
  });
  assert.equal(received, 1, 'nothing was sent to the foreign socket');
  // A socket folder others can write to.
  if (isRoot) chownSync(sock, 0, 0);
  chmodSync(dir, 0o777);
  await assert.rejects(callControl(sock, 'status', {}, 5_000), { code: 'CONTROL_SOCKET_UNSAFE' });
  assert.equal(received, 1);
});
