import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ALERT_CATALOGUE, type AlertKind } from '../daemon/mail/alert-catalogue.js';
import { AlertMailer } from '../daemon/mail/mailer.js';

/**
 * Issue 16 point 6: the alert table in docs/MONITORING.md lists exactly the alerts the code can
 * send (every kind in daemon/mail/alert-catalogue.ts, each used by the code), and every alert mail
 * says what it means and the command that helps.
 */
const ROOT = new URL('../../', import.meta.url).pathname;

function tableKinds(): string[] {
  const doc = readFileSync(join(ROOT, 'docs/MONITORING.md'), 'utf8');
  const section = doc.slice(doc.indexOf('## Alert mails'));
  const table = section.slice(section.indexOf('| kind |'), section.indexOf('\n\n', section.indexOf('| kind |')));
  return table
    .split('\n')
    .slice(2)
    .map((r) => /^\| `([a-z-]+)` \|/.exec(r)?.[1])
    .filter((k): k is string => k !== undefined);
}

test('MONITORING.md alert table == the catalogue == the kinds the code sends', () => {
  const kinds = Object.keys(ALERT_CATALOGUE).sort();
  assert.deepEqual(tableKinds().sort(), kinds, 'one table row per alert kind');
  // The code that sends them (daemon/): each kind is used outside the catalogue, and no alert call is without one.
  const dir = join(ROOT, 'daemon');
  const src = readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts') && !f.endsWith('alert-catalogue.ts'))
    .map((f) => readFileSync(join(dir, f), 'utf8'))
    .join('\n');
  for (const k of kinds) assert.ok(src.includes(`'${k}'`), `${k} is sent somewhere in daemon/`);
  const used = new Set([...src.matchAll(/kind: '([a-z-]+)'/g), ...src.matchAll(/#alert\('([a-z-]+)'/g)].map((m) => m[1]!).filter((k) => k.includes('-') || k === 'ban'));
  for (const k of used) if (/^(monitor|backup|key|ban)/.test(k)) assert.ok(k in ALERT_CATALOGUE, `${k} used in the code is in the catalogue`);
});

test('every alert mail ends with what it means and what helps', { timeout: 30_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-alert-cat-'));
  try {
    const mailer = await AlertMailer.open({ dataDir: dir, config: { to: ['ops@example.test'], groupInterval: '1h' } });
    const kinds = Object.keys(ALERT_CATALOGUE) as AlertKind[];
    for (const kind of kinds) await mailer.alert({ group: `g-${kind}`, kind, severity: 'warning', subject: `test ${kind}`, lines: ['detail'] });
    await mailer.flush();
    const sent = join(dir, 'outbox', 'sent-local');
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && (existsSync(sent) ? readdirSync(sent).length : 0) < kinds.length) await new Promise((r) => setTimeout(r, 25));
    await mailer.close();
    const bodies = readdirSync(sent).map((f) => readFileSync(join(sent, f), 'utf8').replace(/=\r?\n/g, ''));
    assert.equal(bodies.length, kinds.length);
    for (const kind of kinds) {
      const body = bodies.find((b) => b.includes(`test ${kind}`));
      assert.ok(body, kind);
      assert.ok(body.includes('What it means: ') && body.includes('What helps: '), `${kind} mail names meaning and remedy`);
      assert.ok(body.replace(/\s+/g, ' ').includes(ALERT_CATALOGUE[kind].command.slice(0, 30)), `${kind} mail has its command`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
