// Issue 22, point 3: `commusicctl club create-bulk FILE` provisions many clubs at once: every
// line validated (errors by line number, nothing created), one-time passwords in a new 0600 file
// or on stdout, and 1,000 clubs in one run.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { formatPasswordFile, parseClubList, splitCsvLine } from '../daemon/club/club-bulk.js';
import { verifyPassword, needsRehash } from '../crypto/password.js';
import { createClubsWithPasswords, listClubs } from '../storage/server/provisioning.js';
import { openStorage } from '../storage/server/storage.js';
import { tmpDir } from './store-helpers.js';

const execFileP = promisify(execFile);
const CTL = join(import.meta.dirname, '..', 'bin', 'commusicctl.js');

async function ctl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return execFileP(process.execPath, [CTL, ...args], { timeout: 120_000, maxBuffer: 16 * 1024 * 1024 }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
}

test('club list parsing: CSV with quoting and JSON lines; every bad line reported with its number', () => {
  assert.deepEqual(splitCsvLine('"MV Graz, Nord",anna,"pre""mium"'), ['MV Graz, Nord', 'anna', 'pre"mium']);
  assert.throws(() => splitCsvLine('"open,anna'), /unterminated/);
  const ok = parseClubList('\uFEFFname,admin,plan\n# comment\n"MV Graz, Nord",anna,premium\nChor Linz,bert,\n\n');
  assert.deepEqual(ok.errors, []);
  assert.deepEqual(ok.clubs, [
    { line: 3, name: 'MV Graz, Nord', admin: 'anna', plan: 'premium' },
    { line: 4, name: 'Chor Linz', admin: 'bert', plan: 'basic' },
  ]);
  const jl = parseClubList('{"name":"A","admin":"a"}\n{"name":"B","admin":"b","plan":"federation"}\n');
  assert.deepEqual(jl.clubs.map((c) => [c.line, c.name, c.plan]), [[1, 'A', 'basic'], [2, 'B', 'federation']]);
  const bad = parseClubList(['admin,name', 'anna,MV Eins', 'bo b,MV Zwei', 'carl', 'dora,MV Eins', 'emil,MV Drei', 'fritz,"MV Vier'].join('\n'));
  assert.deepEqual(bad.errors.map((e) => e.line), [3, 4, 5, 7]);
  assert.match(bad.errors[0]!.message, /admin: letters, digits/);
  assert.match(bad.errors[1]!.message, /1 fields, the header has 2/);
  assert.match(bad.errors[2]!.message, /repeats line 2/);
  const badJson = parseClubList('{"name":"A","admin":"a"}\n{"name":"B","admin":"b","plan":"gold"}\n[1]\n{"name":"C","admin":"c","password":"x"}\n');
  assert.deepEqual(badJson.errors.map((e) => e.line), [2, 3, 4]);
  assert.match(badJson.errors[2]!.message, /password/);
  assert.equal(parseClubList('name,admin\n').errors[0]!.message, 'the file lists no clubs');
  assert.match(parseClubList('name,owner\nA,b\n').errors[0]!.message, /header must name/);
});

test('password file: CSV quoting and no spreadsheet formulas from club names', () => {
  const text = formatPasswordFile([{ id: 'c1', name: '=HYPERLINK("x")', adminUser: 'anna', plan: 'basic', oneTimePassword: 'pw' }]);
  assert.equal(text, 'id,name,admin,plan,one_time_password\nc1,"\'=HYPERLINK(""x"")",anna,basic,pw\n');
});

test('bulk provisioning: one-time passwords verify, are flagged for rehash, the admin must change them', async (t) => {
  const d = tmpDir('commusic-bulk-');
  t.after(d.cleanup);
  const st = await openStorage({ dataDir: d.dir, create: true });
  t.after(() => st.close());
  const res = await createClubsWithPasswords(st, [{ name: 'MV A', adminUser: 'anna' }, { name: 'MV B', adminUser: 'bert', plan: 'premium' }]);
  assert.equal(res.length, 2);
  assert.notEqual(res[0]!.oneTimePassword, res[1]!.oneTimePassword);
  const row = st.server.mustGetClub(res[1]!.id);
  assert.equal(row.plan, 'premium');
  assert.equal(row.pendingAdmin!.mustChangePassword, true);
  assert.ok(await verifyPassword(res[1]!.oneTimePassword!, row.pendingAdmin!.passwordHash));
  assert.ok(needsRehash(row.pendingAdmin!.passwordHash));
  await assert.rejects(createClubsWithPasswords(st, [{ name: 'ok', adminUser: 'x' }, { name: '', adminUser: 'y' }]), /club 1: club name/);
  assert.equal(listClubs(st).length, 2, 'a bad spec creates nothing');
});

test('commusicctl club create-bulk: 1,000 clubs, passwords in a new 0600 file; a bad file creates nothing', { timeout: 180_000 }, async (t) => {
  const d = tmpDir('commusic-bulk-cli-');
  t.after(d.cleanup);
  const data = join(d.dir, 'data');
  assert.equal((await ctl(['--data', data, 'keys', 'init'])).code, 0);

  const badFile = join(d.dir, 'bad.csv');
  writeFileSync(badFile, 'name,admin\nMV Eins,anna\nMV Zwei,bad name\nMV Drei\n');
  const bad = await ctl(['--data', data, 'club', 'create-bulk', badFile, '--out', join(d.dir, 'none.csv')]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /bad\.csv:3: admin: letters, digits/);
  assert.match(bad.stderr, /bad\.csv:4: 1 fields/);
  assert.match(bad.stderr, /2 errors in .*nothing was created/);
  assert.equal((await ctl(['--data', data, 'club', 'list'])).stdout.trim(), 'no clubs');

  const file = join(d.dir, 'clubs.csv');
  writeFileSync(file, ['name,admin,plan', ...Array.from({ length: 1000 }, (_, i) => `"Musikverein ${i}, Sektion ${i % 7}",admin${i},${i % 3 === 0 ? 'premium' : 'basic'}`)].join('\n'));
  const out = join(d.dir, 'passwords.csv');
  const started = performance.now();
  const r = await ctl(['--data', data, 'club', 'create-bulk', file, '--out', out]);
  t.diagnostic(`1,000 clubs provisioned in ${((performance.now() - started) / 1000).toFixed(1)} s (process start included)`);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /created 1000 clubs/);
  assert.equal(statSync(out).mode & 0o777, 0o600);
  const lines = readFileSync(out, 'utf8').trimEnd().split('\n');
  assert.equal(lines.length, 1001);
  assert.match(lines[1]!, /^c[0-9a-f]{16},"Musikverein 0, Sektion 0",admin0,premium,[A-Za-z0-9]{20}$/);
  assert.equal(new Set(lines.slice(1).map((l) => l.slice(-20))).size, 1000, 'a password per club');
  const listed = (await ctl(['--data', data, 'club', 'list'])).stdout.trim().split('\n');
  assert.match(listed[0]!, /^ID +STATUS +PLAN +CREATED +NAME$/, 'a header row');
  assert.equal(listed.length, 1001);

  // An existing file is never overwritten; --print writes to stdout instead.
  const again = await ctl(['--data', data, 'club', 'create-bulk', badFile.replace('bad', 'one'), '--out', out]);
  assert.notEqual(again.code, 0);
  writeFileSync(join(d.dir, 'one.jsonl'), '{"name":"Chor Neu","admin":"chef"}\n');
  assert.match((await ctl(['--data', data, 'club', 'create-bulk', join(d.dir, 'one.jsonl'), '--out', out])).stderr, /exists/);
  const printed = await ctl(['--data', data, 'club', 'create-bulk', join(d.dir, 'one.jsonl'), '--print']);
  assert.equal(printed.code, 0, printed.stderr);
  assert.match(printed.stdout, /^id,name,admin,plan,one_time_password\nc[0-9a-f]{16},Chor Neu,chef,basic,[A-Za-z0-9]{20}\n$/);
  assert.notEqual((await ctl(['--data', data, 'club', 'create-bulk', join(d.dir, 'one.jsonl')])).code, 0, 'neither --out nor --print');
});
