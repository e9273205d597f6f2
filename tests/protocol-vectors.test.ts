import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac, hkdfSync, createDecipheriv } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { computeVectors, VECTOR_FILE, type VectorInputs, type Vectors } from './helpers/vectors.js';
import { decodeMessage } from '../protocol/messages.js';

const file = JSON.parse(readFileSync(VECTOR_FILE, 'utf8')) as { inputs: VectorInputs; outputs: Vectors };
const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');

test('the implementation reproduces every recorded test vector', () => {
  assert.deepEqual(computeVectors(file.inputs), file.outputs);
});

/** Re-derives the key schedule from the spec text with bare node:crypto, not our code. */
test('the vectors follow the key schedule as docs/PROTOCOL.md writes it', () => {
  const v = file.outputs;
  const h = (s: string) => Buffer.from(s, 'hex');
  const hk = (ikm: Buffer, salt: Buffer, info: string, n: number) => Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from(info), n));
  const ch = h(v.client_hello!);
  const sh = h(v.server_hello_signed_part!);
  assert.equal(ch.subarray(0, 4).toString('latin1'), 'CMSP');
  const th = createHash('sha256').update(ch).update(sh).digest();
  assert.equal(th.toString('hex'), v.transcript_hash);
  assert.equal(Buffer.concat([Buffer.from('CMSP v1 server signature\0'), th]).toString('hex'), v.signature_input);
  const fh = createHash('sha256').update(ch).update(sh).update(h(file.inputs.signature)).digest();
  assert.equal(fh.toString('hex'), v.finished_hash);
  const master = hk(h(v.shared_secret!), th, 'CMSP v1 master', 32);
  const c2s = hk(master, Buffer.alloc(0), 'CMSP v1 c2s traffic', 32);
  assert.equal(c2s.toString('hex'), v.c2s_traffic_secret);
  assert.equal(hk(c2s, Buffer.alloc(0), 'CMSP v1 key', 32).toString('hex'), v.c2s_key);
  assert.equal(hk(c2s, Buffer.alloc(0), 'CMSP v1 iv', 12).toString('hex'), v.c2s_iv);
  const cfk = hk(master, Buffer.alloc(0), 'CMSP v1 c2s finished', 32);
  assert.equal(createHmac('sha256', cfk).update(fh).digest('hex'), v.client_finished);
  const next = hk(c2s, Buffer.alloc(0), 'CMSP v1 key update', 32);
  assert.equal(next.toString('hex'), v.c2s_traffic_secret_after_key_update);
  // The ping record: header as AAD, nonce = iv XOR seq (seq 1: the Finished was record 0).
  const rec = h(v.client_ping_record!);
  const nonce = h(v.c2s_iv!);
  nonce[11]! ^= 1;
  const d = createDecipheriv('aes-256-gcm', h(v.c2s_key!), nonce);
  d.setAAD(rec.subarray(0, 5));
  d.setAuthTag(rec.subarray(rec.length - 16));
  const pt = Buffer.concat([d.update(rec.subarray(5, rec.length - 16)), d.final()]);
  assert.equal(pt.toString('hex'), v.ping_request_cbor);
  assert.deepEqual(decodeMessage(pt), { kind: 'request', id: 1, command: 'ping', payload: {}, stream: false });
});

test('docs/PROTOCOL.md prints exactly the recorded vectors', () => {
  const flat = doc.replace(/\s+/g, '');
  for (const [name, value] of Object.entries(file.outputs)) {
    assert.ok(flat.includes(`${name}=${value}`), `PROTOCOL.md lacks ${name}`);
  }
  for (const [name, value] of Object.entries(file.inputs)) {
    if (name === 'identityPem') continue;
    assert.ok(flat.includes(`${name}=${value}`), `PROTOCOL.md lacks input ${name}`);
  }
});
