import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { startServer } from '../daemon/main/main.js';
import { createClub } from '../storage/server/provisioning.js';
import { parseWhen } from '../bin/commusic-program.js';
import { splitWords } from '../bin/client-batch.js';

/**
 * Issue 16 point 3: a club administrator runs the club with `commusic` subcommands alone:
 * creates a user, gives register rights, reads the log and sets the backup passphrase, in one
 * login (`commusic batch`); a first login that must change its password is stopped with the
 * remedy, and `commusic passwd` changes it without the password on the command line.
 */
const BIN = new URL('../bin/', import.meta.url).pathname;

function run(args: string[], stdin = ''): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [join(BIN, 'commusic.js'), ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    child.stdin!.end(stdin);
  });
}

test('administrator: user, register rights, log, backup passphrase with commusic subcommands in one login', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-admin-cli-'));
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({ health: { enabled: false } }));
  const server = await startServer(loadConfig({ file, flags: { dataDir: join(dir, 'data'), listen: '127.0.0.1:0' } }), { logger: nullLogger() });
  try {
    const { id: club, oneTimePassword } = (await createClub(server.storage, { name: 'MV Admin', adminUser: 'anna' })) as { id: string; oneTimePassword: string };
    const g = ['--server', `127.0.0.1:${server.daemon.address().port}`, '--fingerprint', server.identity.fingerprint, '--club', club, '--user', 'anna'];

    // First login with the one-time password: no terminal, so the remedy is named, nothing runs.
    let r = await run([...g, '--password-stdin', 'users', 'list'], `${oneTimePassword}\n`);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /must change its password.*commusic passwd/);
    // passwd: the old password is the login password (stdin line 1), the new one stdin line 2.
    r = await run([...g, '--password-stdin', 'passwd', '--new-password-stdin'], `${oneTimePassword}\nanna-new-password-1\n`);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /password changed/);

    const pw = join(dir, 'pw');
    writeFileSync(pw, 'anna-new-password-1\n', { mode: 0o600 });
    const pp = join(dir, 'pp');
    writeFileSync(pp, 'club-backup-passphrase-1\n', { mode: 0o600 });
    const script = [
      '# a run of administration, one login',
      `call registers.create --payload '{"name": "Flöten"}'`,
      'users add bert --display-name "Bert Bauer"',
      'rights set bert --role registerLeader --register Flöten',
      'rights show bert --json',
      `backup set-passphrase --passphrase-file ${pp}`,
      'log --since 1d --json',
      'users list',
    ].join('\n');
    r = await run([...g, '--password-file', pw, 'batch', '-'], script);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /created user bert \(id \d+\)\none-time password/);
    assert.match(r.stdout, /bert now has role registerLeader for Flöten/);
    assert.match(r.stdout, /backup passphrase set at/);
    assert.match(r.stdout, /^ID +USER +NAME +ROLE +ADMIN +STATE +LAST LOGIN$/m, 'the users table has a header');
    assert.match(r.stdout, /bert +Bert Bauer +registerLeader +no +must change password/);
    const jsonLines = r.stdout.split('\n').filter((l) => l.startsWith('{'));
    const rights = JSON.parse(jsonLines.find((l) => l.includes('"grants"'))!) as { role: string; grants: { scope: { kind: string } }[] };
    assert.equal(rights.role, 'registerLeader');
    assert.ok(rights.grants.some((x) => x.scope.kind === 'registers'));
    const log = JSON.parse(jsonLines.find((l) => l.includes('"entries"'))!) as { entries: { action: string; session: string | null }[] };
    const actions = log.entries.map((e) => e.action);
    assert.ok(actions.includes('backup.setPassphrase') && actions.includes('rights.set') && actions.includes('create'), actions.join(','));

    // One login for the whole run: the batch's entries share one session, and there is exactly one login after passwd's.
    r = await run([...g, '--password-file', pw, 'log', '--action', 'login', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).entries.length, 4, 'first try, passwd, the batch, this query');
    r = await run([...g, '--password-file', pw, 'log', '--since', 'yesterday', '--json']);
    const batchEntries = (JSON.parse(r.stdout).entries as { action: string; session: string | null }[]).filter((e) => ['create', 'rights.set', 'backup.setPassphrase'].includes(e.action));
    assert.equal(new Set(batchEntries.map((e) => e.session)).size, 1, 'one session for the batch');

    // backup download and export write 0600 files
    const ex = join(dir, 'export.json');
    r = await run([...g, '--password-file', pw, 'export', '--out', ex]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(statSync(ex).mode & 0o777, 0o600);
    // A failing line stops the batch and names the line.
    r = await run([...g, '--password-file', pw, 'batch', '-'], 'whoami\nusers disable nobody\nwhoami\n');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: line 2: no user "nobody"/m);
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('parseWhen: today, yesterday, durations, dates; splitWords quoting', () => {
  const now = new Date(2026, 10, 30, 15, 0, 0);
  assert.equal(parseWhen('yesterday', '--since', now), new Date(2026, 10, 29).toISOString());
  assert.equal(parseWhen('today', '--since', now), new Date(2026, 10, 30).toISOString());
  assert.equal(parseWhen('1d', '--since', now), new Date(now.getTime() - 86_400_000).toISOString());
  assert.equal(parseWhen('2026-01-02', '--since', now), new Date(2026, 0, 2).toISOString());
  assert.deepEqual(splitWords(`a "b c" 'd"e' f\\ g # comment`), ['a', 'b c', 'd"e', 'f g']);
  assert.equal(splitWords('   # only a comment'), null);
  assert.throws(() => splitWords('"open'), /unterminated/);
});
