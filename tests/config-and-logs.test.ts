import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeKeyFile } from '../crypto/master-key.js';
import { ConfigError, loadConfig } from '../daemon/main/config.js';
import { connect } from '../client/connection.js';
import { waitUntil } from './helpers/daemon.js';

const bin = (name: string) => new URL(`../bin/${name}.js`, import.meta.url).pathname;

test('configuration: defaults, file < environment < flags, and clear errors naming the setting', () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-config-'));
  try {
    const d = loadConfig({});
    assert.equal(d.listen, '127.0.0.1:7443');
    assert.equal(d.limits.handshakeTimeoutMs, 10_000);
    const file = join(dir, 'c.json');
    writeFileSync(file, JSON.stringify({ listen: '127.0.0.1:1000', logLevel: 'warn', limits: { maxConnections: 5 } }));
    const c = loadConfig({ file, env: { COMMUSIC_LISTEN: '127.0.0.1:2000' }, flags: { logLevel: 'debug' } });
    assert.equal(c.listen, '127.0.0.1:2000', 'environment beats the file');
    assert.equal(c.logLevel, 'debug', 'flags beat everything');
    assert.equal(c.limits.maxConnections, 5);

    const bad = (cfg: unknown, re: RegExp) => {
      writeFileSync(file, JSON.stringify(cfg));
      assert.throws(() => loadConfig({ file }), (e: Error) => e instanceof ConfigError && re.test(e.message));
    };
    bad({ limits: { maxConnections: 0 } }, /limits\.maxConnections/);
    bad({ listen: 'nowhere' }, /listen: expected HOST:PORT/);
    bad({ listen: '127.0.0.1:70000' }, /port above 65535/);
    bad({ lsiten: '127.0.0.1:1' }, /:1:2: invalid configuration at lsiten: unknown setting "lsiten" \(did you mean "listen"\?\)/);
    bad({ logLevel: 'loud' }, /logLevel/);
    writeFileSync(file, '{ not json');
    assert.throws(() => loadConfig({ file }), /:1:\d+: not valid YAML or JSON/);
    assert.throws(() => loadConfig({ file: join(dir, 'missing.json') }), /cannot read config file/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('logs never carry a password, a key or a session secret', { timeout: 60_000 }, async () => {
  const root = mkdtempSync(join(tmpdir(), 'commusic-logs-'));
  const dir = join(root, 'data');
  const logFile = join(root, 'daemon.log');
  const password = 'Sup3r-Secret-Passw0rd-for-anna';
  const child = spawn(process.execPath, [bin('commusicd'), '--data', dir, '--listen', '127.0.0.1:0', '--health-listen', '127.0.0.1:0', '--log-level', 'debug'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, COMMUSIC_LOG_FILE: logFile },
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  try {
    const port = await new Promise<number>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no start: ${stderr}`)), 20_000);
      child.stdout!.on('data', () => {
        const m = /listening on 127\.0\.0\.1:(\d+)/.exec(stdout);
        if (m) {
          clearTimeout(t);
          resolve(Number(m[1]));
        }
      });
    });
    const fingerprint = /server fingerprint: ([0-9a-f]{64})/.exec(stdout)![1]!;
    await new Promise<void>((resolve, reject) => {
      const c = execFile(process.execPath, [bin('commusicctl'), '--data', dir, 'club', 'create', 'Log Test', '--admin', 'anna', '--password-stdin'], (e) => (e ? reject(e) : resolve()));
      c.stdin!.end(password);
    });
    const conn = await connect({ host: '127.0.0.1', port, fingerprint });
    await conn.ping();
    await assert.rejects(conn.request('no.such.command', { password }));
    await conn.close();
    await new Promise<void>((resolve) => {
      const s = netConnect({ port, host: '127.0.0.1', localAddress: '127.0.0.61' }, () => s.write('GET /?password=x HTTP/1.0\r\n\r\n'));
      s.on('close', () => resolve());
      s.on('error', () => resolve());
      s.resume();
    });
    // Wait for the violation from 127.0.0.61 to reach the log, not for a time.
    const logged = () => `${stderr}\n${existsSync(logFile) ? readFileSync(logFile, 'utf8') : ''}`;
    await waitUntil(() => logged().split('\n').some((l) => l.includes('"message":"violation"') && l.includes('127.0.0.61')), 20_000, 'the violation in the log');
  } finally {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }
  try {
    const logs = `${stderr}\n${readFileSync(logFile, 'utf8')}`;
    assert.match(logs, /"message":"violation"/, 'the log did record events');
    const { key } = await decodeKeyFile(readFileSync(join(dir, 'keys', 'master.key')), 'master.key');
    const pem = readFileSync(join(dir, 'keys', 'identity.pem'), 'utf8');
    const pemBody = pem.split('\n').filter((l) => l && !l.startsWith('-----'));
    for (const secret of [password, key.toString('hex'), key.toString('base64'), ...pemBody]) {
      assert.ok(!logs.includes(secret), `log contains a secret (${secret.slice(0, 6)}…)`);
    }
    assert.doesNotMatch(logs, /\n\s+at \S+ \(/, 'no stack traces');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
