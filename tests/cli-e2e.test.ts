import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitUntil } from './helpers/daemon.js';

/**
 * The three programs as an operator and a member use them: first start with the embedded
 * default, keys, ping with the right and a wrong fingerprint, clubs, unsafe key files, and the
 * key-file watch raising an alert while the daemon runs.
 */
const bin = (name: string) => new URL(`../bin/${name}.js`, import.meta.url).pathname;

async function cli(name: string, args: string[], input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [bin(name), ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    if (input !== undefined) child.stdin!.end(input);
  });
}

interface Daemon {
  child: ChildProcess;
  port: number;
  stdout: string[];
  stderr: string[];
}

/** Starts commusicd on port 0 and waits for its "listening" line. */
function startDaemon(dataDir: string, passphrase?: string): Promise<Daemon> {
  return new Promise((resolve, reject) => {
    const args = [bin('commusicd'), '--data', dataDir, '--listen', '127.0.0.1:0', '--health-listen', '127.0.0.1:0', ...(passphrase !== undefined ? ['--passphrase-fd', '3'] : [])];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
    if (passphrase !== undefined) (child.stdio[3] as NodeJS.WritableStream).end(`${passphrase}\n`);
    else (child.stdio[3] as NodeJS.WritableStream).end();
    const d: Daemon = { child, port: 0, stdout: [], stderr: [] };
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`daemon did not start: ${d.stderr.join('')}`));
    }, 20_000);
    child.stderr!.on('data', (b: Buffer) => d.stderr.push(b.toString()));
    child.stdout!.on('data', (b: Buffer) => {
      d.stdout.push(b.toString());
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(d.stdout.join(''));
      if (m && d.port === 0) {
        d.port = Number(m[1]);
        clearTimeout(timer);
        resolve(d);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (d.port === 0) reject(Object.assign(new Error(`daemon exited ${code}: ${d.stderr.join('')}`), { exitCode: code, stderr: d.stderr.join('') }));
    });
  });
}

async function stopDaemon(d: Daemon): Promise<number | null> {
  if (d.child.exitCode !== null) return d.child.exitCode;
  const exited = new Promise<number | null>((r) => d.child.once('exit', (c) => r(c)));
  d.child.kill('SIGTERM');
  return exited;
}

const until = waitUntil;

test('first start with the embedded default: keys created 0600, fingerprint printed, ping works, wrong fingerprint fails clearly', { timeout: 60_000 }, async () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'commusic-cli-')), 'data');
  const d = await startDaemon(dir);
  try {
    const printed = /server fingerprint: ([0-9a-f]{64})/.exec(d.stdout.join(''))?.[1];
    assert.ok(printed, 'the first start prints the fingerprint');
    for (const f of ['keys/identity.pem', 'keys/master.key']) {
      assert.equal(statSync(join(dir, f)).mode & 0o777, 0o600, `${f} is 0600`);
    }
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    const shown = await cli('commusicctl', ['--data', dir, 'keys', 'show', '--json']);
    assert.equal(shown.code, 0);
    assert.equal((JSON.parse(shown.stdout) as { fingerprint: string }).fingerprint, printed);

    const ok = await cli('commusic', ['--server', `127.0.0.1:${d.port}`, '--fingerprint', printed!, 'ping']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /time=\d+\.\d+ ms/);

    const wrong = await cli('commusic', ['--server', `127.0.0.1:${d.port}`, '--fingerprint', 'ab'.repeat(32), 'ping']);
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.stderr, /^error: the key of 127\.0\.0\.1:\d+ \([0-9a-f]{64}\) does not match the expected fingerprint; refusing to connect \[SERVER_KEY_MISMATCH\]\n$/);
    assert.equal(wrong.stdout, '');

    // Trust on first use: recorded, then accepted; a different key is refused loudly.
    const known = join(dir, '..', 'known_servers');
    const first = await cli('commusic', ['--server', `127.0.0.1:${d.port}`, '--tofu', '--known-servers', known, 'ping']);
    assert.equal(first.code, 0, first.stderr);
    assert.match(readFileSync(known, 'utf8'), new RegExp(`127\\.0\\.0\\.1:${d.port} ${printed}`));
    const again = await cli('commusic', ['--server', `127.0.0.1:${d.port}`, '--tofu', '--known-servers', known, 'ping']);
    assert.equal(again.code, 0);
    // Once recorded, the known-servers file alone is enough (as ssh's known_hosts); a server not
    // in it still needs --fingerprint or --tofu.
    const plain = await cli('commusic', ['--server', `127.0.0.1:${d.port}`, '--known-servers', known, 'ping']);
    assert.equal(plain.code, 0, plain.stderr);
    const unknown = await cli('commusic', ['--server', `127.0.0.1:${d.port}`, '--known-servers', join(dir, '..', 'empty_known'), 'ping']);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /--fingerprint .*--tofu/);

    assert.equal(await stopDaemon(d), 0, 'SIGTERM exits 0');
    // Another server (another key) now answers at an address recorded with the old key.
    const other = await startDaemon(join(dir, '..', 'other'));
    try {
      appendFileSync(known, `127.0.0.1:${other.port} ${printed}\n`);
      const changed = await cli('commusic', ['--server', `127.0.0.1:${other.port}`, '--tofu', '--known-servers', known, 'ping']);
      assert.notEqual(changed.code, 0);
      assert.match(changed.stderr, /WARNING: the key of 127\.0\.0\.1:\d+ has CHANGED .*refusing to connect\. \[SERVER_KEY_CHANGED\]/);
      const changedPlain = await cli('commusic', ['--server', `127.0.0.1:${other.port}`, '--known-servers', known, 'ping']);
      assert.notEqual(changedPlain.code, 0);
      assert.match(changedPlain.stderr, /SERVER_KEY_CHANGED/);
    } finally {
      await stopDaemon(other);
    }
  } finally {
    await stopDaemon(d);
    rmSync(join(dir, '..'), { recursive: true, force: true });
  }
});

test('the daemon refuses unsafe key files and says how to fix them', { timeout: 60_000 }, async () => {
  const root = mkdtempSync(join(tmpdir(), 'commusic-cli-keys-'));
  try {
    const dir = join(root, 'data');
    const init = await cli('commusicctl', ['--data', dir, 'keys', 'init', '--json']);
    assert.equal(init.code, 0, init.stderr);
    const again = await cli('commusicctl', ['--data', dir, 'keys', 'init']);
    assert.notEqual(again.code, 0, 'keys init never overwrites');
    for (const f of ['identity.pem', 'master.key']) {
      const path = join(dir, 'keys', f);
      chmodSync(path, 0o644);
      await assert.rejects(startDaemon(dir), (e: Error & { exitCode?: number; stderr?: string }) => {
        assert.notEqual(e.exitCode, 0);
        assert.match(e.stderr ?? '', new RegExp(`${f.replace('.', '\\.')}.*(chmod 600|mode)`));
        assert.doesNotMatch(e.stderr ?? '', /\n\s+at /, 'no stack trace');
        return true;
      });
      chmodSync(path, 0o600);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('changing the master key file while the daemon runs raises a security alert within seconds', { timeout: 60_000 }, async () => {
  const root = mkdtempSync(join(tmpdir(), 'commusic-cli-watch-'));
  const dir = join(root, 'data');
  const d = await startDaemon(dir);
  try {
    const created = await cli('commusicctl', ['--data', dir, 'club', 'create', 'Stadtkapelle', '--admin', 'clara', '--json']);
    assert.equal(created.code, 0, created.stderr);
    assert.match((JSON.parse(created.stdout) as { id: string }).id, /^c[0-9a-f]+$/);
    const listed = JSON.parse((await cli('commusicctl', ['--data', dir, 'club', 'list', '--json'])).stdout) as { name: string }[];
    assert.deepEqual(listed.map((c) => c.name), ['Stadtkapelle']);

    chmodSync(join(dir, 'keys', 'master.key'), 0o640);
    const sent = join(dir, 'outbox', 'sent-local');
    await until(() => existsSync(sent) && readdirSync(sent).some((f) => /key file/i.test(readFileSync(join(sent, f), 'utf8'))), 10_000, 'the key-file alert');
    await until(() => d.stderr.join('').includes('"security event"'), 5_000, 'the security log line');
    const status = JSON.parse((await cli('commusicctl', ['--data', dir, 'status', '--json'])).stdout) as { keyFileWatch: string };
    assert.equal(status.keyFileWatch, 'alarm');
    chmodSync(join(dir, 'keys', 'master.key'), 0o600);
  } finally {
    await stopDaemon(d);
    rmSync(root, { recursive: true, force: true });
  }
});

test('a passphrase-protected master key: the daemon refuses to start without it, starts with it from a descriptor', { timeout: 60_000 }, async () => {
  const root = mkdtempSync(join(tmpdir(), 'commusic-cli-pass-'));
  const dir = join(root, 'data');
  try {
    const init = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
      const child = spawn(process.execPath, [bin('commusicctl'), '--data', dir, '--passphrase-fd', '3', 'keys', 'init', '--json'], { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
      (child.stdio[3] as NodeJS.WritableStream).end('correct horse battery staple\n');
      let stdout = '';
      child.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
      child.on('exit', (code) => resolve({ code, stdout }));
    });
    assert.equal(init.code, 0);
    assert.equal((JSON.parse(init.stdout) as { passphraseProtected: boolean }).passphraseProtected, true);
    await assert.rejects(startDaemon(dir), (e: Error & { stderr?: string }) => /PASSPHRASE_REQUIRED/.test(e.stderr ?? ''));
    await assert.rejects(startDaemon(dir, 'wrong passphrase'), (e: Error & { stderr?: string }) => /WRONG_PASSPHRASE/.test(e.stderr ?? ''));
    const d = await startDaemon(dir, 'correct horse battery staple');
    assert.ok(d.port > 0);
    assert.equal(await stopDaemon(d), 0);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
