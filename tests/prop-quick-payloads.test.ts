/**
 * Issue 13, request path: the hot payloads (ping, ENTITY.get and ENTITY.update, persons.* among them) are
 * checked by a shortcut (`quickParse`) instead of the general zod path. The shortcut is only
 * allowed where it is provably equivalent: on random payloads, valid and invalid, whenever the
 * shortcut accepts, zod accepts and returns the same value; and the dispatcher (shortcut first,
 * zod otherwise) accepts and rejects exactly what zod alone does. Payloads also come through the
 * real message codec, so the maps the decoder produces take the shortcut.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Dispatcher, type CommandSpec } from '../daemon/edge/dispatcher.js';
import { CommandError } from '../daemon/edge/command-errors.js';
import { registerCoreCommands } from '../daemon/edge/core-commands.js';
import { decodeMessage, encodeMessage } from '../protocol/messages.js';
import { clubEnv } from './helpers/club-server.js';

const RUNS = 3000;

/** Values near and across every bound of the schemas (ids, lengths, types). */
const value = fc.oneof(
  fc.integer({ min: -3, max: 1_000_000 }),
  fc.constantFrom(0, -0, 1, 0.5, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 1, 2 ** 60, NaN, Infinity, -Infinity),
  fc.double(),
  fc.string({ maxLength: 70 }),
  fc.constantFrom('', 'x'.repeat(64), 'x'.repeat(65), 'c1a2b3', 'ü'.repeat(64)),
  fc.constant(null),
  fc.constant(undefined),
  fc.boolean(),
  fc.uint8Array({ maxLength: 8 }),
  fc.array(fc.string({ maxLength: 5 }), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 3 }), fc.integer(), { maxKeys: 2 }),
);

const key = fc.oneof(fc.constantFrom('id', 'club', 'fields', 'data', 'x', '', 'constructor', 'toString'), fc.string({ maxLength: 6 }));

/** Text around the length bounds of persons' fields (country 2, postalCode 20, city 100, street 200, notes 2000). */
const text = fc.oneof(
  fc.string({ maxLength: 3 }),
  fc.integer({ min: 0, max: 2002 }).map((n) => 'a'.repeat(n)),
  fc.constantFrom(1, 2, 3, 20, 21, 100, 101, 200, 201, 500, 501, 2000, 2001).map((n) => 'a'.repeat(n)),
  fc.constantFrom('AT', 'ü', '😀', '😀😀', ' x ', ''),
  fc.constant(null),
  fc.constant(undefined),
  fc.integer(),
);
const updateKey = fc.constantFrom('street', 'postalCode', 'city', 'country', 'notes', 'firstName', 'gender', 'phones', 'blocked', 'guardianPersonId', 'registerId', 'name', 'description', 'instrument', 'title');

/** Mostly near-valid payloads (so both branches are taken often), some of any shape. */
const payload = fc.oneof(
  { weight: 3, arbitrary: fc.tuple(fc.integer({ min: 1, max: 1000 }), fc.dictionary(updateKey, text, { maxKeys: 4 }), fc.option(fc.string({ minLength: 1, maxLength: 64 }), { nil: undefined })).map(([id, rest, club]) => ({ ...rest, id, ...(club !== undefined ? { club } : {}) })) },
  { weight: 1, arbitrary: fc.tuple(value, fc.dictionary(updateKey, text, { maxKeys: 3 })).map(([id, rest]) => ({ id, ...rest })) },
  { weight: 3, arbitrary: fc.record({ id: value, club: value }, { requiredKeys: [] }) },
  { weight: 2, arbitrary: fc.record({ id: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), club: fc.string({ minLength: 1, maxLength: 64 }) }, { requiredKeys: ['id'] }) },
  { weight: 2, arbitrary: fc.record({ data: value }, { requiredKeys: [] }) },
  { weight: 2, arbitrary: fc.dictionary(key, value, { maxKeys: 4 }) },
  { weight: 1, arbitrary: value },
  { weight: 1, arbitrary: fc.constant(Object.create(null) as Record<string, unknown>) },
);

function zodOutcome(spec: CommandSpec, p: unknown): { ok: true; data: unknown } | { ok: false } {
  const r = spec.schema.safeParse(p);
  return r.success ? { ok: true, data: r.data } : { ok: false };
}

function prepareOutcome(d: Dispatcher, command: string, p: unknown): { ok: true; data: unknown } | { ok: false } {
  try {
    return { ok: true, data: d.prepare(command, p, false).payload };
  } catch (e) {
    if (e instanceof CommandError && e.code === 'BAD_REQUEST') return { ok: false };
    throw e;
  }
}

/** Whether a payload is a plain map all the way (what the dispatcher requires before any schema). */
function isPlainMap(p: unknown): boolean {
  return typeof p === 'object' && p !== null && Object.getPrototypeOf(p) === Object.prototype;
}

function checkCommand(d: Dispatcher, command: string, minQuick = RUNS / 40): void {
  const spec = d.spec(command)!;
  assert.ok(spec.quickParse, `${command} has a shortcut`);
  let quick = 0;
  fc.assert(
    fc.property(payload, (p) => {
      const q = spec.quickParse!(p);
      const z = zodOutcome(spec, p);
      if (q) {
        quick++;
        assert.equal(z.ok, true, 'the shortcut accepted what zod refuses');
        assert.deepStrictEqual(q.data, (z as { data: unknown }).data);
        assert.deepStrictEqual(Object.keys(q.data as object), Object.keys((z as { data: object }).data), 'the same keys in the same order');
      }
      const viaDispatcher = prepareOutcome(d, command, p);
      const expected = isPlainMap(p) ? z : { ok: false };
      assert.equal(viaDispatcher.ok, expected.ok);
      if (viaDispatcher.ok) assert.deepStrictEqual(viaDispatcher.data, (expected as { data: unknown }).data);
    }),
    { numRuns: RUNS },
  );
  assert.ok(quick >= minQuick, `the shortcut was taken (${quick} of ${RUNS})`);
}

test('ping: the shortcut is equivalent to its zod schema', () => {
  const d = new Dispatcher();
  registerCoreCommands(d, () => ({ name: 't', version: '0', protocolVersion: 1, fingerprint: 'f' }));
  checkCommand(d, 'ping');
});

test('ENTITY.get (persons.get and every other entity): the shortcut is equivalent to the zod schema', async () => {
  const env = await clubEnv();
  try {
    for (const c of env.dispatcher.names().filter((n) => n.endsWith('.get') && env.dispatcher.spec(n)!.quickParse)) checkCommand(env.dispatcher, c);
    checkCommand(env.dispatcher, 'persons.get');
  } finally {
    await env.close();
  }
});

test('ENTITY.update (persons.update and every other entity with plain text fields): the shortcut is equivalent to the zod schema', async () => {
  const env = await clubEnv();
  try {
    checkCommand(env.dispatcher, 'persons.update');
    for (const c of ['registers.update', 'registerAssignments.update', 'events.update']) if (env.dispatcher.spec(c)) checkCommand(env.dispatcher, c, RUNS / 200);
  } finally {
    await env.close();
  }
});

test('payloads decoded from the wire take the shortcut', async () => {
  const env = await clubEnv();
  try {
    const spec = env.dispatcher.spec('persons.get')!;
    for (const p of [{ id: 7 }, { id: 7, club: 'c1a2b3' }]) {
      const m = decodeMessage(encodeMessage({ kind: 'request', id: 1, command: 'persons.get', payload: p, stream: false }));
      const got = spec.quickParse!((m as { payload: unknown }).payload);
      assert.deepEqual(got, { data: p });
    }
  } finally {
    await env.close();
  }
});
