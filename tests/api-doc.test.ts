import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { apiDocPath, apiMarkdown, apiSchema, fullRegistry } from '../tools/gen-api.js';
import { undeclaredCommands } from '../daemon/edge/api-schema.js';
import { registerBackupCommands } from '../daemon/backup/backup-commands.js';
import { MODEL, ENTITY_NAMES } from '../storage/club/model.js';
import { clubEnv, ADMIN_PASSWORD } from './helpers/club-server.js';

/**
 * Issue 15, point 1: docs/API.md is generated from the command registry and the data model,
 * covers every command and entity field, and `server.schema` returns the same description.
 * Point 2: model defaults let `persons.create {firstName, lastName}` succeed; internal names
 * (`file`) never reach a response.
 */

test('docs/API.md is what `npm run docs:api` generates (run it after changing a command or the model)', () => {
  assert.equal(readFileSync(apiDocPath(), 'utf8'), apiMarkdown(), 'docs/API.md is stale: run `npm run docs:api`');
});

test('every registered command declares its right and response; every entity field is described', () => {
  const d = fullRegistry();
  assert.deepEqual(undeclaredCommands(d), []);
  const api = apiSchema();
  assert.deepEqual(api.commands.map((c) => c.name), d.names());
  for (const c of api.commands) {
    assert.ok(c.right && c.response && c.summary, `${c.name} has right, response and summary`);
    for (const f of c.payload) assert.ok(f.type !== 'any value' || f.name === 'value', `${c.name}.${f.name} has a type`);
  }
  const md = apiMarkdown();
  for (const n of ENTITY_NAMES) {
    const e = MODEL[n];
    if (e.system && n !== 'users') continue;
    const doc = api.entities.find((x) => x.name === n);
    assert.ok(doc, `entity ${n} described`);
    for (const [k, fd] of Object.entries(e.fields)) {
      const shown = doc.fields.some((f) => f.name === k);
      assert.equal(shown, !(fd.serverOnly || fd.sensitivity === 'secret'), `${n}.${k} listed exactly when a client sees it`);
    }
  }
  assert.match(md, /\| `photoConsent` \| boolean \| optional, default `false` \|/);
  assert.match(md, /`federation-registration`/);
  assert.doesNotMatch(md, /`file`/);
});

test('server.schema over the wire equals the generated description; persons.create needs only the names; no `file` in documents answers', async () => {
  const env = await clubEnv();
  try {
    registerBackupCommands(env.dispatcher, env.services);
    const club = await env.newClub();
    const srv = await env.listen();
    const conn = await srv.connect();
    try {
      const r = await conn.request('server.schema', {});
      const parts: Uint8Array[] = [];
      for await (const c of r.download!) parts.push(c);
      const body = Buffer.concat(parts);
      assert.deepEqual(r.payload, { mediaType: 'application/json', size: body.length });
      assert.deepEqual(JSON.parse(body.toString('utf8')), apiSchema());
      await conn.request('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
      const created = (await conn.request('persons.create', { firstName: 'Anna', lastName: 'Berger' })).payload as { record: Record<string, unknown> };
      assert.equal(created.record.photoConsent, false);
      assert.equal(created.record.blocked, false);
      const up = (await conn.request('documents.upload', { kind: 'other', name: 'a.txt' }, { upload: Buffer.from('hello') })).payload as { document: Record<string, unknown> };
      assert.ok(!('file' in up.document));
      const got = (await conn.request('documents.get', { id: up.document.id })).payload as { record: Record<string, unknown> };
      const list = (await conn.request('documents.list', {})).payload as { items: Array<Record<string, unknown>> };
      assert.equal(got.record.name, 'a.txt');
      assert.ok(!('file' in got.record), 'documents.get shows no internal file name');
      assert.ok(list.items.length === 1 && !('file' in list.items[0]!), 'documents.list shows no internal file name');
      await assert.rejects(conn.request('documents.get', { id: up.document.id, fields: ['file'] }), (e: { code?: string }) => e.code === 'BAD_REQUEST');
      await assert.rejects(conn.request('documents.list', { filters: [{ field: 'file', op: 'eq', value: 'x' }] }), (e: { code?: string }) => e.code === 'BAD_REQUEST');
    } finally {
      await conn.close();
    }
  } finally {
    await env.close();
  }
});
