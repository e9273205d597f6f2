import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as constants from '../protocol/constants.js';
import { KEY_BLOCK_V3_LEN } from '../protocol/key-schedule.js';
import { MAX_ANSWER_PAYLOAD } from '../protocol/answer-size.js';
import { OWN_RECORD_FROM } from '../protocol/output-queue.js';
import { MAX_REFUSAL_LEN, REFUSAL_FIRST_BYTE } from '../protocol/refusal.js';
import { MAX_NOTICE_ROTATIONS, MAX_NOTICES_PER_SESSION } from '../protocol/identity-notice.js';
import { MAX_ERROR_CODE_LEN, MAX_ERROR_MESSAGE_LEN } from '../protocol/messages.js';
import { MAX_WIRE_ERROR_TEXT, WIRE_ERROR_CODES } from '../daemon/edge/command-errors.js';
import { COMMAND_DOCS } from '../daemon/edge/api-schema.js';
import { PEER_PROOF_LEN } from '../cluster/peer-auth.js';
import { MAX_ANSWER_BYTES_PER_USER, MAX_REQUEST_KEYS, MAX_REQUEST_KEYS_PER_USER, MAX_STORED_ANSWER_BYTES, REQUEST_KEY_TTL_MS } from '../daemon/cluster/gate.js';
import { configSchema } from '../daemon/main/config.js';
import { fullRegistry } from '../tools/gen-api.js';
import { ENTITY_NAMES, MODEL } from '../storage/club/model.js';

/**
 * docs/PROTOCOL.md is written for someone building a client in another language from it alone:
 * each table a reader takes numbers or names from is checked here against the code, in both
 * directions where the code has a complete list (constants, error codes, commands, limits).
 */
const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');

function section(heading: string): string {
  const at = doc.indexOf(`\n${heading}`);
  assert.ok(at >= 0, `PROTOCOL.md has "${heading}"`);
  const level = /^#+/.exec(heading)![0];
  const rest = doc.slice(at + 1 + heading.length);
  const next = rest.search(new RegExp(`\\n#{2,${level.length}} `));
  return next < 0 ? rest : rest.slice(0, next);
}

/** The rows of the first markdown table in `text`, as cells (header and rule left out). */
function rows(text: string): string[][] {
  const lines = text.split('\n').filter((l) => l.startsWith('|'));
  return lines.slice(2).map((l) => l.split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim()));
}

type Value = number | Buffer | number[];

/** One value as the table writes it: 75, `0x0807`, 2^20 = 1048576, 2^32 - 1, 21600000 (6 h), "text" 0x00, `43 4d`. */
function parseValue(raw: string): Value {
  let v = raw.replace(/\s*\((?:"[^"]*"|[^)]*)\)\s*$/, '').replaceAll('`', '').trim();
  if (v.includes('=')) v = v.slice(v.lastIndexOf('=') + 1).trim();
  let m = /^"([^"]*)"( 0x00)?$/.exec(v);
  if (m) return Buffer.concat([Buffer.from(m[1]!, 'ascii'), m[2] ? Buffer.of(0) : Buffer.alloc(0)]);
  if (/^([0-9a-f]{2} ){2,}[0-9a-f]{2}$/.test(v)) return Buffer.from(v.replaceAll(' ', ''), 'hex');
  if (/^\d+(, \d+)+$/.test(v)) return v.split(', ').map(Number);
  m = /^(\d+)\^(\d+)( - 1)?$/.exec(v);
  if (m) return Number(m[1]) ** Number(m[2]) - (m[3] ? 1 : 0);
  if (/^0x[0-9a-f]+$/.test(v)) return Number.parseInt(v, 16);
  assert.match(v, /^\d+$/, `a value the test can read: ${raw}`);
  return Number(v);
}

/** Section 2's table: name -> value, rows of several names split on " / ". */
function documentedConstants(): Map<string, Value> {
  const out = new Map<string, Value>();
  for (const [names, values] of rows(section('## 2. Constants'))) {
    const ns = names!.split(' / ').map((n) => n.replaceAll('`', ''));
    const vs = ns.length > 1 ? values!.split(' / ') : [values!];
    assert.equal(vs.length, ns.length, `one value per name in the row ${names}`);
    ns.forEach((n, i) => {
      assert.ok(!out.has(n), `${n} named once`);
      out.set(n, parseValue(vs[i]!));
    });
  }
  return out;
}

/** What the code says, for every name section 2 may use. */
const CODE: Record<string, unknown> = {
  ...constants,
  KEY_BLOCK_V3_LEN,
  MAX_ANSWER_PAYLOAD,
  OWN_RECORD_FROM,
  REFUSAL_FIRST_BYTE,
  MAX_REFUSAL_LEN,
  MAX_NOTICE_ROTATIONS,
  MAX_NOTICES_PER_SESSION,
  MAX_ERROR_CODE_LEN,
  MAX_ERROR_MESSAGE_LEN,
  MAX_WIRE_ERROR_TEXT,
  PEER_PROOF_LEN,
  MAX_STORED_ANSWER_BYTES,
  REQUEST_KEY_TTL_MS,
  MAX_REQUEST_KEYS,
  MAX_REQUEST_KEYS_PER_USER,
  MAX_ANSWER_BYTES_PER_USER,
};

const comparable = (v: unknown): unknown => (Buffer.isBuffer(v) ? v.toString('hex') : Array.isArray(v) ? [...v] : v);

test('PROTOCOL.md 2: every constant in the table has the value of the code', () => {
  const documented = documentedConstants();
  for (const [name, value] of documented) {
    assert.ok(name in CODE, `${name} is a name of the code`);
    assert.deepEqual(comparable(value), comparable(CODE[name]), name);
  }
});

test('PROTOCOL.md 2: every wire constant of protocol/constants.ts is in the table', () => {
  const documented = documentedConstants();
  const missing = Object.keys(constants).filter((n) => !documented.has(n));
  assert.deepEqual(missing, []);
});

test('PROTOCOL.md 6.2 lists exactly the error codes the server sends', () => {
  const documented = new Set<string>();
  for (const [codes] of rows(section('### 6.2 Error codes (ERROR message)'))) for (const c of codes!.matchAll(/`([A-Z_]+)`/g)) documented.add(c[1]!);
  assert.deepEqual([...documented].sort(), [...WIRE_ERROR_CODES].sort());
});

test('PROTOCOL.md 3.3 and 5.2 give the Reject and CLOSE codes of the code', () => {
  const reject = section('### 3.3 Reject (server → client, 5 bytes, then the server closes)');
  assert.match(reject, new RegExp(`${constants.REJECT_VERSION} = no common version`));
  assert.match(reject, new RegExp(`${constants.REJECT_HANDSHAKE_FAILED} = handshake failed`));
  assert.match(reject, new RegExp(`${constants.REJECT_BUSY} = busy`));
  const close = section('### 5.2 CLOSE');
  assert.match(close, new RegExp(`${constants.CLOSE_NORMAL} normal, ${constants.CLOSE_SHUTDOWN} server shutting down, ${constants.CLOSE_IDLE} idle timeout,\\s+${constants.CLOSE_PROTOCOL_ERROR} protocol error,\\s+${constants.CLOSE_POLICY} policy`));
});

test('PROTOCOL.md 6: the message kinds table numbers each kind as the code does', () => {
  const kinds = rows(section('## 6. Messages'));
  const got = new Map(kinds.map(([k]) => /^(\d) ([A-Z]+)$/.exec(k!)).filter((m) => m !== null).map((m) => [m![2]!, Number(m![1])]));
  const code = Object.entries(constants).filter(([n]) => n.startsWith('MSG_')).map(([n, v]) => [n.slice(4), v]);
  assert.deepEqual(Object.fromEntries(got), Object.fromEntries(code));
});

test('PROTOCOL.md 9: the limits table shows the configuration defaults of the code', () => {
  const l = configSchema.parse({}).limits;
  const table = rows(section('## 9. Limits and timeouts (server defaults, configurable)'));
  const cell = (label: RegExp) => {
    const row = table.find(([name]) => label.test(name!));
    assert.ok(row, `a row ${label}`);
    return `${row[0]} | ${row[1]}`;
  };
  const s = (ms: number) => `${ms / 1000} s`;
  const expect: [RegExp, string][] = [
    [/^handshake must complete/, `| ${s(l.handshakeTimeoutMs)} (\`limits.handshakeTimeoutMs\`)`],
    [/^a record must be complete/, `| ${s(l.recordTimeoutMs)} (\`limits.recordTimeoutMs\`)`],
    [/^a user must log in/, `| ${s(l.loginTimeoutMs)} (\`limits.loginTimeoutMs\`)`],
    [/^idle established session/, `| ${s(l.idleTimeoutMs)} without traffic (\`limits.idleTimeoutMs\`)`],
    [/^connections$/, `| ${l.maxConnections} (\`limits.maxConnections\`)`],
    [/^handshakes in progress/, `/${l.limitPrefixV4} or /${l.limitPrefixV6} | ${l.maxPendingHandshakes} / ${l.maxPendingHandshakesPerIp} / ${l.maxPendingHandshakesPerPrefix} (`],
    [/^random early drop/, `| ${l.earlyDropStart} (${l.earlyDropRate}) (`],
    [/^sessions not logged in/, `/${l.limitPrefixV4} or /${l.limitPrefixV6} | ${l.maxPreLogin} / ${l.maxPreLoginPerIp} / ${l.maxPreLoginPerPrefix} (`],
    [/^password hashes running/, `| ${l.passwordHashConcurrency} / ${l.passwordHashQueuedPerSource} (\`limits.passwordHashConcurrency\`, \`limits.passwordHashQueuedPerSource\`)`],
    [/^request timeout/, `| ${s(l.requestTimeoutMs)} (\`limits.requestTimeoutMs\`)`],
    [/^graceful shutdown/, `| ${s(l.shutdownGraceMs)} (\`limits.shutdownGraceMs\`)`],
    [/^written-but-unsent bytes/, `| ${l.writeHighWaterBytes / 1048576} MiB (\`limits.writeHighWaterBytes\`)`],
  ];
  for (const [label, want] of expect) assert.ok(cell(label).includes(want), `${label}: "${cell(label)}" shows "${want}"`);
  // Every limit of the configuration appears in the table (by its key, or as a prefix rule).
  const text = table.map((r) => r.join(' | ')).join('\n');
  for (const key of Object.keys(l)) {
    if (key === 'limitPrefixV4' || key === 'limitPrefixV6') continue;
    const short = key.replace(/^maxPendingHandshakes(?=Per)|^maxPreLogin(?=Per)/, '…');
    assert.ok(text.includes(`limits.${key}\``) || text.includes(`\`${key}\``) || text.includes(`\`${short}\``), `limits.${key} is in the table`);
  }
});

test('PROTOCOL.md 6.6 and 7 name every command the server registers, and no other', () => {
  const registered = new Set(fullRegistry().names());
  // The peer commands exist only on a cluster member (daemon/cluster/peer-commands.ts); COMMAND_DOCS declares them.
  const known = new Set([...registered, ...Object.keys(COMMAND_DOCS).filter((n) => n.startsWith('peer.'))]);
  const named = new Set<string>();
  const text = `${section('### 6.6 Between servers: the peer commands')}\n${section('## 7. Commands')}`;
  for (const line of text.split('\n')) {
    const first = /^\| ([^|]+) \|/.exec(line)?.[1];
    if (!first) continue;
    for (const m of first.matchAll(/`([a-zA-Z]+\.[a-zA-Z]+|ping)`/g)) named.add(m[1]!);
  }
  // 7.4: "For every entity `E` of the data model (`persons, memberships, ...`".
  const list = /For every entity `E` of the data model \(`([a-zA-Z, \n]+)`/.exec(doc);
  assert.ok(list, 'PROTOCOL.md 7.4 lists the entities');
  const entities = list[1]!.split(/,\s*/);
  const dataEntities = ENTITY_NAMES.filter((n) => !MODEL[n].system && registered.has(`${n}.create`));
  assert.deepEqual([...entities].sort(), [...dataEntities].sort(), 'the entities of 7.4 are those with the generic commands');
  const generic = [...named].filter((n) => n.startsWith('E.')).map((n) => n.slice(2));
  const expanded = new Set([...named].filter((n) => !n.startsWith('E.')));
  for (const e of entities) for (const verb of generic) expanded.add(`${e}.${verb}`);
  assert.deepEqual([...registered].filter((n) => !expanded.has(n)).sort(), [], 'registered commands PROTOCOL.md does not name');
  assert.deepEqual([...expanded].filter((n) => !known.has(n)).sort(), [], 'commands PROTOCOL.md names that the server does not have');
});
