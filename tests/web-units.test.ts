import { test } from 'node:test';
import assert from 'node:assert/strict';
import { html, escapeHtml } from '../daemon/web/html.js';
import { loadConfig } from '../daemon/main/config.js';
import { pickLang } from '../daemon/web/i18n.js';
import { SessionStore, type EndReason, type WebSession } from '../daemon/web/sessions.js';

function store(o: { idle?: number; absolute?: number; max?: number } = {}) {
  let now = 1_000_000;
  const ended: Array<{ user: string; reason: EndReason }> = [];
  const s = new SessionStore({ idleTimeoutMs: o.idle ?? 1000, absoluteTimeoutMs: o.absolute ?? 5000, maxSessions: o.max ?? 10, onEnd: (x: WebSession, reason) => ended.push({ user: x.user, reason }), now: () => now });
  return { s, ended, advance: (ms: number) => (now += ms) };
}

const mk = (s: SessionStore, user = 'u') => s.create({ club: 'c', user, ip: '127.0.0.1', commands: new Map(), mustChangePassword: false });

test('a session unused past the idle timeout ends and is reported once', () => {
  const { s, ended, advance } = store();
  const { id } = mk(s);
  advance(900);
  assert.ok(s.get(id), 'used within the idle time');
  advance(900);
  assert.ok(s.get(id), 'each use extends the idle time');
  advance(1001);
  assert.equal(s.get(id), undefined);
  assert.deepEqual(ended, [{ user: 'u', reason: 'idle timeout' }]);
  assert.equal(s.get(id), undefined);
  assert.equal(ended.length, 1);
});

test('a session ends at the absolute timeout however busy it is', () => {
  const { s, ended, advance } = store();
  const { id } = mk(s);
  for (let i = 0; i < 5; i++) {
    advance(900);
    assert.ok(s.get(id));
  }
  advance(600);
  assert.equal(s.get(id), undefined);
  assert.deepEqual(ended, [{ user: 'u', reason: 'absolute timeout' }]);
});

test('sweep ends timed-out sessions; the table is bounded; ids are looked up by digest only', () => {
  const { s, ended, advance } = store({ max: 2 });
  const a = mk(s, 'a');
  advance(10);
  mk(s, 'b');
  advance(10);
  mk(s, 'c');
  assert.equal(s.size, 2);
  assert.deepEqual(ended, [{ user: 'a', reason: 'session table full' }]);
  assert.equal(s.get(a.id), undefined);
  assert.notEqual(a.session.key, a.id);
  advance(2000);
  s.sweep();
  assert.equal(s.size, 0);
  assert.equal(s.get('x'.repeat(65)), undefined);
});

test('login form token: bound to its pre-session cookie, compared whole', () => {
  const { s } = store();
  const pre = s.newPre();
  const token = s.preToken(pre);
  assert.ok(s.checkPre(pre, token));
  assert.equal(s.checkPre(s.newPre(), token), false);
  assert.equal(s.checkPre(pre, token.slice(0, -1)), false);
  assert.equal(s.checkPre(undefined, token), false);
});

test('html escapes every interpolated value, passes nested templates, and escapes attribute quotes', () => {
  const evil = `<script>alert("x")</script>' onmouseover='x' \``;
  const out = html`<p title="${evil}">${evil}${html`<b>${'&'}</b>`}${[html`<i>1</i>`, '<2>']}</p>`.value;
  assert.equal(out, `<p title="${escapeHtml(evil)}">${escapeHtml(evil)}<b>&amp;</b><i>1</i>&lt;2&gt;</p>`);
  assert.doesNotMatch(out, /<script|onmouseover='/);
});

test('German first, English when the browser asks for it first', () => {
  assert.equal(pickLang(undefined), 'de');
  assert.equal(pickLang('fr-FR,en;q=0.8'), 'de');
  assert.equal(pickLang('de-AT,en;q=0.5'), 'de');
  assert.equal(pickLang('en-GB,de;q=0.5'), 'en');
});

test('the web listener is off unless configured: flag, environment and file', () => {
  assert.equal(loadConfig({}).web.listen, undefined);
  assert.equal(loadConfig({ flags: { webListen: '127.0.0.1:7445' } }).web.listen, '127.0.0.1:7445');
  assert.equal(loadConfig({ env: { COMMUSIC_WEB_LISTEN: '[::1]:8443' } }).web.listen, '[::1]:8443');
  assert.throws(() => loadConfig({ flags: { webListen: 'nohost' } }), /web\.listen/);
});
