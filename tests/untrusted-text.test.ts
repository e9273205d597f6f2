import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { wireBanAlerts } from '../daemon/bans/ban-alerts.js';
import { BanEngine } from '../daemon/bans/ban-engine.js';
import { AlertMailer } from '../daemon/mail/mailer.js';
import { neutralise, safeJson } from '../daemon/common/neutralise.js';
import { createLogger } from '../daemon/common/log.js';
import { ViolationBus } from '../daemon/bans/violations.js';
import { BanStore } from '../storage/bans/ban-store.js';
import { createClub } from '../storage/server/provisioning.js';
import { ADMIN_PASSWORD, clubEnv } from './helpers/club-server.js';
import { parseMail } from './helpers/smtp-sink.js';

/**
 * Issue 11 point 5: a login name (and a club name, a ban reason) carrying CR LF, ESC and U+202E
 * reaches a person only escaped: in the alert mail body and in every CLI's text output.
 */
const EVIL = 'mallory\r\nX-Forged: yes\x1b[2J\u202egnp.exe';
const RAW = /[\r\x1b\u202e]/;
const ESCAPED = ['\\r\\n', '\\x1b[2J', '\\u202e'];

function assertEscaped(text: string, where: string): void {
  assert.doesNotMatch(text, RAW, `${where}: no raw CR, ESC or U+202E`);
  assert.doesNotMatch(text, /^X-Forged/m, `${where}: no forged line`);
  for (const e of ESCAPED) assert.ok(text.includes(e), `${where}: shows ${e}`);
}

test('neutralise escapes controls, escape sequences and bidi overrides visibly; safeJson stays JSON', () => {
  assert.equal(neutralise(EVIL), 'mallory\\r\\nX-Forged: yes\\x1b[2J\\u202egnp.exe');
  assert.equal(neutralise('Müller-Lüdenscheid, 日本'), 'Müller-Lüdenscheid, 日本', 'ordinary letters untouched');
  assert.equal(neutralise('a\u2066b\u0085c\u200bd\ufeff'), 'a\\u2066b\\x85c\\u200bd\\ufeff');
  const json = safeJson({ user: EVIL });
  assert.doesNotMatch(json, RAW);
  assert.deepEqual(JSON.parse(json), { user: EVIL }, 'the JSON still reads back to the same value');
});

test('a login name with CR LF, ESC and U+202E appears escaped in the alert mail body', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'commusic-evil-mail-'));
  const table = BanStore.openInDir(dir);
  const bus = new ViolationBus();
  const engine = new BanEngine({ table, bus, purgeEvery: 0 });
  const mailer = await AlertMailer.open({ dataDir: dir, config: { groupInterval: '1h', serverName: 'test-1' } });
  const unwire = wireBanAlerts(engine, mailer);
  try {
    const t0 = Date.now();
    for (let i = 0; i < 5; i++) bus.report({ ip: '127.0.31.1', kind: 'login', time: t0 + i, detail: 'failed login', user: EVIL, club: 'c\u202elub', command: 'auth.login' });
    assert.ok(table.check('127.0.31.1', Date.now()), 'banned at the 5th failed login');
    await mailer.flush();
    const sent = path.join(dir, 'outbox', 'sent-local');
    const files = fs.readdirSync(sent).filter((f) => f.endsWith('.eml'));
    assert.equal(files.length, 1);
    const mail = parseMail(fs.readFileSync(path.join(sent, files[0]!), 'utf8'));
    assertEscaped(mail.body, 'mail body');
    assert.ok(mail.body.includes('c\\u202elub'), 'the club id too');
  } finally {
    unwire();
    engine.close();
    await mailer.close();
    table.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

const bin = (name: string) => new URL(`../bin/${name}.js`, import.meta.url).pathname;
function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin('commusicctl'), ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

test('untrusted names and reasons appear escaped in every commusicctl text output', { timeout: 120_000 }, async () => {
  const env = await clubEnv();
  try {
    const club = (await createClub(env.storage, { name: `MV ${EVIL}`, adminUser: 'admin', adminPassword: ADMIN_PASSWORD })).id;
    // A failed login under the evil name: the club's change log records the name tried.
    assert.equal(await env.session('127.0.31.2').code('auth.login', { club, user: EVIL, password: 'wrong-password-1' }), 'UNAUTHENTICATED');
    const d = ['--data', env.dataDir];
    const added = await cli([...d, 'bans', 'add', '192.0.2.66', '--for', '1h', '--reason', `report ${EVIL}`]);
    assert.equal(added.code, 0, added.stderr);
    const show = (await cli([...d, 'club', 'show', club, '--json'])).stdout;
    assert.doesNotMatch(show, RAW, 'club show --json');
    assert.ok(show.includes('\\r\\n') && show.includes('\\u001b[2J') && show.includes('\\u202e'), 'club show --json escapes as JSON does');
    const outputs: Record<string, string> = {
      'club show': (await cli([...d, 'club', 'show', club])).stdout,
      'club list': (await cli([...d, 'club', 'list'])).stdout,
      'log show': (await cli([...d, 'log', 'show', '--club', club])).stdout,
      'bans list': (await cli([...d, 'bans', 'list'])).stdout,
      'bans check': (await cli([...d, 'bans', 'check', '192.0.2.66'])).stdout,
    };
    for (const [what, out] of Object.entries(outputs)) assertEscaped(out, what);
    // --json stays machine-readable and still carries no raw control or bidi character.
    const json = (await cli([...d, 'bans', 'list', '--json'])).stdout;
    assert.doesNotMatch(json, RAW);
    assert.equal((JSON.parse(json) as { reason: string }[])[0]!.reason, `report ${EVIL}`);
    // An error message that repeats untrusted input is escaped too.
    const bad = await cli([...d, 'bans', 'add', `1.2.3.4\x1b[2J\u202e`, '--for', '1h', '--reason', 'x']);
    assert.notEqual(bad.code, 0);
    assert.doesNotMatch(bad.stderr, RAW);
  } finally {
    await env.close();
  }
});

test('a log line carries a peer-chosen name escaped: no raw control or bidi character', async () => {
  const seen: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array) => {
    seen.push(String(chunk));
    return true;
  }) as typeof process.stderr.write;
  try {
    createLogger().warn('violation', { kind: 'login', user: EVIL });
    const deadline = Date.now() + 5000;
    while (!seen.some((l) => l.includes('"violation"')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  } finally {
    process.stderr.write = write;
  }
  const line = seen.find((l) => l.includes('"violation"'));
  assert.ok(line, 'the line was written');
  assert.doesNotMatch(line.trimEnd(), RAW);
  assert.equal((JSON.parse(line) as { user: string }).user, EVIL, 'still JSON with the same value');
});
