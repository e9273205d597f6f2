import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect as tlsConnect } from 'node:tls';
import { connect as netConnect } from 'node:net';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createClub } from '../storage/server/provisioning.js';
import { queryAuditLog } from '../storage/club/audit-log.js';
import { waitUntil } from './helpers/daemon.js';
import { startWebEnv, WebClient, type WebEnv } from './helpers/web.js';

/**
 * The web application (issue 17), against a daemon on loopback: the whole member flow in a real
 * browser (Debian's chromium through puppeteer-core), register scope, the security headers and
 * cookie flags, CSRF refusal, TLS 1.1 and plain HTTP refused, the shared ban engine, and one
 * change-log entry per web mutation.
 */
const ADMIN_PW = 'Admin-Password-123';
const LEO_PW = 'Leo-Password-12345';
const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = new URL('../../test-artifacts/web/', import.meta.url).pathname;

let env: WebEnv;
let club: string;
const ids: Record<string, number> = {};
let chefOtp = '';

before(async () => {
  env = await startWebEnv();
  club = (await createClub(env.server.storage, { name: 'MV Web', adminUser: 'admin', adminPassword: ADMIN_PW })).id;
  const c = await env.protocol('127.0.0.2');
  try {
    const call = async (cmd: string, p: unknown) => (await c.request(cmd, p)).payload as any;
    await call('auth.login', { club, user: 'admin', password: ADMIN_PW });
    ids.blech = (await call('registers.create', { name: 'Blech' })).record.id;
    ids.holz = (await call('registers.create', { name: 'Holz' })).record.id;
    ids.mueller = (await call('persons.create', { firstName: 'Max', lastName: 'Müller', city: 'Graz', photoConsent: false, blocked: false })).record.id;
    ids.schmidt = (await call('persons.create', { firstName: 'Sara', lastName: 'Schmidt', city: 'Linz', photoConsent: false, blocked: false })).record.id;
    ids.chef = (await call('persons.create', { firstName: 'Clara', lastName: '<b>Chef</b>', photoConsent: false, blocked: false })).record.id;
    await call('registerAssignments.create', { personId: ids.mueller, registerId: ids.blech, from: '2020-01-01', leader: false });
    await call('registerAssignments.create', { personId: ids.schmidt, registerId: ids.holz, from: '2020-01-01', leader: false });
    chefOtp = (await call('users.create', { username: 'chef', personId: ids.chef, admin: true })).oneTimePassword;
    ids.leo = (await call('users.create', { username: 'leo', password: LEO_PW, role: 'registerLeader', registers: [ids.blech] })).user.id;
    ids.eva = (await call('users.create', { username: 'eva', password: 'Eva-Password-12345', role: 'member' })).user.id;
  } finally {
    await c.close();
  }
});

after(async () => {
  await env?.close();
});

function logEntries(): number {
  return queryAuditLog(env.server.storage.openClub(club).db, { limit: 1000 }).entries.length;
}

function lastEntries(n: number) {
  return queryAuditLog(env.server.storage.openClub(club).db, { descending: true, limit: n }).entries;
}

type Launcher = { launch(o: import('puppeteer-core').LaunchOptions): Promise<import('puppeteer-core').Browser> };

async function loadPuppeteer(): Promise<Launcher | string> {
  if (!existsSync(CHROMIUM)) return `${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; .ci/run does it as root)`;
  try {
    return (await import('puppeteer-core')).default as unknown as Launcher;
  } catch {
    return 'the npm package puppeteer-core is missing (npm ci)';
  }
}

test('in chromium: log in, change the first password, list persons, open one, filter the change log, export own record, log out', { timeout: 120_000 }, async (t) => {
  const pp = await loadPuppeteer();
  if (typeof pp === 'string') return t.skip(pp);
  rmSync(ARTIFACTS, { recursive: true, force: true });
  mkdirSync(join(ARTIFACTS, 'downloads'), { recursive: true });
  const browser = await pp.launch({ executablePath: CHROMIUM, headless: true, acceptInsecureCerts: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--lang=de-DE'] });
  try {
    const page = await browser.newPage();
    await page.setExtraHTTPHeaders({ 'Accept-Language': 'de-DE,de;q=0.9' });
    const cdp = await page.createCDPSession();
    await cdp.send('Browser.setDownloadBehavior', { behavior: 'allow', downloadPath: join(ARTIFACTS, 'downloads') });
    const base = `https://127.0.0.1:${env.port}`;
    const shot = (name: string) => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
    const submit = async (selector: string) => {
      await Promise.all([page.waitForNavigation(), page.click(selector)]);
    };

    await page.goto(`${base}/`);
    assert.match(page.url(), /\/login$/);
    assert.equal(await page.$eval('html', (e) => e.getAttribute('lang')), 'de');
    await shot('01-login');
    await page.type('#club', club);
    await page.type('#user', 'chef');
    await page.type('#password', chefOtp);
    await submit('#login');
    assert.match(page.url(), /\/password$/, 'a first login is led to the password change');
    await shot('02-password');
    // Every other page leads back there until the password is changed.
    await page.goto(`${base}/persons`);
    assert.match(page.url(), /\/password$/);
    await page.type('#oldPassword', chefOtp);
    await page.type('#newPassword', 'Chef-New-Password-1');
    await page.type('#repeat', 'Chef-New-Password-1');
    await submit('#change');
    assert.match(await page.$eval('main', (e) => e.textContent ?? ''), /Passwort wurde geändert/);

    await page.goto(`${base}/persons`);
    const names = await page.$$eval('#persons tbody tr', (rows) => rows.map((r) => r.textContent ?? ''));
    assert.equal(names.length, 3);
    assert.ok(names.some((n) => n.includes('<b>Chef</b>')), 'markup in data is shown as text');
    assert.equal(await page.$$eval('#persons b', (b) => b.length), 0, 'no element made from data');
    await shot('03-persons');
    await Promise.all([page.waitForNavigation(), page.click(`a[href="/persons/${ids.mueller}"]`)]);
    assert.match(await page.$eval('#person', (e) => e.textContent ?? ''), /Graz/);
    await shot('04-person');

    await page.goto(`${base}/log`);
    assert.match(await page.$eval('#chain', (e) => e.textContent ?? ''), /unverändert/);
    await page.type('#action', 'login');
    await page.type('#user', 'chef');
    await submit('#filter');
    assert.doesNotMatch(page.url(), /chef|login/, 'filters are not in the URL');
    const actions = await page.$$eval('#log tbody tr td:nth-child(4)', (c) => c.map((x) => x.textContent));
    assert.ok(actions.length >= 1);
    assert.ok(actions.every((a) => a === 'login'));
    await shot('05-log-filtered');

    await page.goto(`${base}/me`);
    assert.match(await page.$eval('#me-person', (e) => e.textContent ?? ''), /Clara/);
    await shot('06-me');
    await page.click('#export');
    const dl = join(ARTIFACTS, 'downloads', 'commusic-auskunft.json');
    await waitUntil(() => existsSync(dl) && readdirSync(join(ARTIFACTS, 'downloads')).every((f) => !f.endsWith('.crdownload')), 20_000, 'the export download');
    const exported = JSON.parse(readFileSync(dl, 'utf8'));
    assert.equal(exported.format, 'commusic-gdpr-art15-v1');
    assert.equal(exported.person.firstName, 'Clara');
    assert.equal(exported.user.username, 'chef');

    await page.goto(`${base}/admin/users`);
    assert.match(await page.$eval('#users', (e) => e.textContent ?? ''), /leo/);
    await shot('08-admin-users');
    await page.goto(`${base}/admin/backup`);
    await shot('09-admin-backup');

    await submit('#logout');
    assert.match(page.url(), /\/login$/);
    await shot('10-logged-out');
    await page.goto(`${base}/persons`);
    assert.match(page.url(), /\/login$/, 'the session is gone after logout');
    const last = queryAuditLog(env.server.storage.openClub(club).db, { user: 'chef', action: 'logout', limit: 10 }).entries;
    assert.deepEqual(last.at(-1)?.changes, { source: 'web' });
  } finally {
    await browser.close();
  }
});

test('a register leader sees only their register; another register\'s person is "not found" and a rights violation', { timeout: 60_000 }, async () => {
  const w = new WebClient(env, '127.0.0.21');
  const r = await w.login(club, 'leo', LEO_PW);
  assert.equal(r.status, 303);
  const list = await w.get('/persons');
  assert.equal(list.status, 200);
  assert.match(list.body, /Müller/);
  assert.doesNotMatch(list.body, /Schmidt|Chef/);
  assert.equal((await w.get(`/persons/${ids.mueller}`)).status, 200);
  const me = await w.get('/me');
  assert.equal(me.status, 200);
  assert.doesNotMatch(me.body, /href="\/log"|href="\/admin/, 'the navigation offers only what the rights allow');
  // A page the rights do not cover is refused without asking the handlers: no violation.
  const seen = env.server.banSystem.table.size;
  assert.equal((await w.get('/log')).status, 403);
  assert.equal((await w.get('/admin/users')).status, 403);
  assert.equal(env.server.banSystem.table.check('127.0.0.21', Date.now()), undefined);
  assert.equal(env.server.banSystem.table.size, seen);
  const before = env.server.banSystem.table.size;
  const guessed = await w.get(`/persons/${ids.schmidt}`);
  assert.equal(guessed.status, 404);
  assert.match(guessed.body, /Nicht gefunden/);
  assert.doesNotMatch(guessed.body, /Schmidt|Linz/);
  // The attempt is a rights violation: the ban engine bans the address at once.
  await waitUntil(() => env.server.banSystem.table.check('127.0.0.21', Date.now()) !== undefined, 10_000, 'the rights ban');
  assert.ok(env.server.banSystem.table.size > before);
  const lg = lastEntries(20).find((e) => e.action === 'login' && e.user === 'leo');
  assert.deepEqual(lg?.changes, { source: 'web' }, 'the login is logged with source web');
});

test('cookie flags, CSP, HSTS, no-store, and CSRF refusal', { timeout: 60_000 }, async () => {
  const w = new WebClient(env, '127.0.0.31');
  const page = await w.get('/login');
  const csp = String(page.headers['content-security-policy']);
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'none'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.doesNotMatch(page.body, /<script/i);
  assert.match(String(page.headers['strict-transport-security']), /max-age=63072000; includeSubDomains/);
  assert.equal(page.headers['cache-control'], 'no-store');
  // A login form without a valid token is refused, and nothing is logged in.
  const forged = await w.request('POST', '/login', { club, user: 'eva', password: 'Eva-Password-12345', _csrf: 'forged' });
  assert.equal(forged.status, 403);
  assert.equal(((forged.headers['set-cookie'] ?? []) as string[]).some((c) => c.startsWith('__Host-cm_session')), false);
  const r = await w.login(club, 'eva', 'Eva-Password-12345');
  assert.equal(r.status, 303);
  const set = (r.headers['set-cookie'] as string[]).find((c) => c.startsWith('__Host-cm_session='))!;
  assert.ok(set, 'a session cookie');
  for (const flag of ['Secure', 'HttpOnly', 'SameSite=Strict', 'Path=/']) assert.ok(set.split('; ').includes(flag), `cookie flag ${flag}: ${set}`);
  assert.doesNotMatch(set, /Domain=/i);
  const me = await w.get('/me');
  assert.equal(me.status, 200);
  const token = w.csrf();
  assert.equal(me.headers['cache-control'], 'no-store');
  // Logout without the token, and with another session's token: refused, session still alive.
  const entries = logEntries();
  assert.equal((await w.request('POST', '/logout', {})).status, 403);
  assert.equal((await w.request('POST', '/logout', { _csrf: 'x'.repeat(43) })).status, 403);
  assert.equal((await w.request('POST', '/me/export', { _csrf: 'x'.repeat(43) })).status, 403);
  assert.equal((await w.request('POST', '/logout', { _csrf: token }, { 'sec-fetch-site': 'cross-site' })).status, 403);
  const json = await w.request('POST', '/logout', undefined, { 'content-type': 'application/json' }, JSON.stringify({ _csrf: token }));
  assert.equal(json.status, 415, 'only form bodies are parsed');
  assert.equal(logEntries(), entries, 'refused forms change nothing');
  assert.equal((await w.get('/me')).status, 200, 'the session is still alive');
  assert.equal((await w.post('/logout')).status, 303);
});

test('TLS 1.1 and plain HTTP are refused; TLS 1.2 is served', { timeout: 30_000 }, async () => {
  const attempt = (maxVersion: 'TLSv1.1' | 'TLSv1.2') =>
    new Promise<string>((resolve) => {
      const raw = netConnect({ host: '127.0.0.1', port: env.port, localAddress: '127.0.0.41' });
      const s = tlsConnect({ socket: raw, host: '127.0.0.1', minVersion: 'TLSv1', maxVersion, ciphers: 'DEFAULT:@SECLEVEL=0', ca: env.ca }, () => {
        const v = s.getProtocol() ?? 'none';
        s.destroy();
        resolve(v);
      });
      s.on('error', (e) => resolve(`error ${(e as NodeJS.ErrnoException).code ?? e.message}`));
    });
  assert.equal(await attempt('TLSv1.2'), 'TLSv1.2');
  assert.match(await attempt('TLSv1.1'), /^error/);
  const plain = await new Promise<string>((resolve) => {
    let got = '';
    const s = netConnect({ host: '127.0.0.1', port: env.port, localAddress: '127.0.0.42' }, () => s.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    s.on('data', (d) => (got += d.toString('latin1')));
    s.on('close', () => resolve(got));
    s.on('error', () => resolve(got));
  });
  assert.doesNotMatch(plain, /^HTTP\//, 'no HTTP answer on the TLS port');
});

test('wrong passwords from one address ban it for the web listener and the protocol alike', { timeout: 90_000 }, async () => {
  const ip = '127.0.0.51';
  const w = new WebClient(env, ip);
  for (let i = 0; i < 5; i++) {
    if (env.server.banSystem.table.check(ip, Date.now())) break;
    const r = await w.login(club, i % 2 ? 'nobody' : 'eva', 'wrong-password-123');
    assert.equal(r.status, 401);
    assert.match(r.body, /Verein, Benutzer oder Passwort unbekannt/);
  }
  await waitUntil(() => env.server.banSystem.table.check(ip, Date.now()) !== undefined, 10_000, 'the login ban');
  await assert.rejects(w.get('/login'), 'the web listener refuses the banned address');
  await assert.rejects(env.protocol(ip), 'the protocol refuses it too');
  // Another address is served.
  assert.equal((await new WebClient(env, '127.0.0.52').get('/login')).status, 200);
  const failed = lastEntries(30).filter((e) => e.action === 'login.failed' && e.ip === ip);
  assert.ok(failed.length >= 1);
  assert.equal((failed[0]!.changes as { source?: string }).source, 'web');
});

test('every web mutation writes exactly one change-log entry', { timeout: 90_000 }, async () => {
  const w = new WebClient(env, '127.0.0.61');
  const step = async (what: string, action: string, fn: () => Promise<unknown>) => {
    const n = logEntries();
    await fn();
    const after = logEntries();
    assert.equal(after - n, 1, `${what}: exactly one entry`);
    assert.equal(lastEntries(1)[0]!.action, action, what);
  };
  await w.get('/login');
  await step('login', 'login', () => w.post('/login', { club, user: 'admin', password: ADMIN_PW }));
  await w.get('/password');
  await step('password change', 'update', () => w.post('/password', { oldPassword: ADMIN_PW, newPassword: 'Admin-Password-456', repeat: 'Admin-Password-456' }));
  await w.get('/admin/users');
  await step('rights set', 'rights.set', () => w.post('/admin/rights', { userId: String(ids.eva), role: 'registerLeader', registers: String(ids.holz) }));
  assert.match(w.lastBody, /Die Rechte wurden gesetzt/);
  await w.get('/admin/backup');
  await step('backup passphrase and addresses', 'backup.setPassphrase', () => w.post('/admin/backup', { passphrase: 'Backup-Passphrase-1', repeat: 'Backup-Passphrase-1', emails: 'kassier@mv-web.test, vorstand@mv-web.test' }));
  assert.match(w.lastBody, /Passphrase und Adressen wurden gespeichert/);
  assert.match(w.lastBody, /kassier@mv-web.test, vorstand@mv-web.test/);
  await w.get('/admin/backup');
  const refused = await w.post('/admin/backup', { currentPassphrase: 'not-the-passphrase', passphrase: 'Backup-Passphrase-2', repeat: 'Backup-Passphrase-2', emails: '' });
  assert.equal(refused.status, 400, 'replacing the passphrase needs the current one');
  await w.get('/me');
  await step('GDPR export', 'export', async () => {
    const r = await w.post('/me/export');
    assert.equal(r.status, 200);
    assert.match(String(r.headers['content-disposition']), /^attachment; filename="commusic-auskunft.json"$/);
  });
  await w.get('/me');
  await step('logout', 'logout', () => w.post('/logout'));
});

test('a web session that times out is logged out in the change log with its reason and source web', { timeout: 60_000 }, async () => {
  const w = new WebClient(env, '127.0.0.71');
  assert.equal((await w.login(club, 'leo', LEO_PW)).status, 303);
  assert.equal((await w.get('/me')).status, 200);
  // The store's timeout path (the unit tests drive it with a clock): end every session as idle.
  env.server.web!.sessions.endAll('idle timeout');
  const r = await w.get('/me');
  assert.equal(r.status, 303);
  assert.equal(r.headers.location, '/login');
  const out = lastEntries(5).find((e) => e.action === 'logout' && e.user === 'leo');
  assert.deepEqual(out?.changes, { reason: 'idle timeout', source: 'web' });
  assert.equal(out?.ip, '127.0.0.71');
});

test('one login in flight per HTTP connection: a pipelined second login on the same socket gets 503 at once, as BUSY over the protocol', { timeout: 60_000 }, async () => {
  const w = new WebClient(env, '127.0.0.61');
  await w.get('/login');
  const cookie = [...w.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  const body = new URLSearchParams({ club, user: 'eva', password: 'wrong-password-123', _csrf: w.csrf() }).toString();
  const one = `POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: ${cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
  const sock = tlsConnect({ socket: netConnect({ host: '127.0.0.1', port: env.port, localAddress: '127.0.0.61' }), ca: env.ca, servername: 'localhost' });
  try {
    let got = '';
    sock.on('data', (d: Buffer) => (got += d.toString('latin1')));
    await new Promise<void>((resolve, reject) => {
      sock.once('secureConnect', resolve);
      sock.once('error', reject);
    });
    sock.write(one + one);
    await waitUntil(() => (got.match(/^HTTP\/1\.1 \d{3}/gm) ?? []).length >= 2, 30_000, 'two answers on the socket');
    const statuses = (got.match(/^HTTP\/1\.1 (\d{3})/gm) ?? []).map((l) => Number(l.slice(9)));
    assert.deepEqual(statuses, [401, 503], 'the first login is checked (wrong password), the second is refused while it runs');
  } finally {
    sock.destroy();
  }
});
