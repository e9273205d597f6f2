import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac, hkdfSync, createDecipheriv } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { computeVectors, VECTOR_FILE, VECTOR_FILE_V2, type VectorInputs, type Vectors } from './helpers/vectors.js';
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
  // The exporter (section 4): never sent, what the cluster's membership proof binds to (6.6).
  assert.equal(hk(master, Buffer.alloc(0), 'CMSP v1 exporter', 32).toString('hex'), v.exporter);
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

// ---------------------------------------------------------------------------------------------
// Version 2 (PROTOCOL.md 6.3, 10.1): the same key and randoms, the client offering 1..2.

const fileV2 = JSON.parse(readFileSync(VECTOR_FILE_V2, 'utf8')) as { inputs: VectorInputs; outputs: Vectors };

test('version 2: the implementation reproduces every recorded test vector', () => {
  assert.deepEqual(computeVectors(fileV2.inputs, 2), fileV2.outputs);
});

test('version 2: the hello carries the range 1..2 and the choice 2; the records follow the spec with bare node:crypto', () => {
  const v = fileV2.outputs;
  const h = (s: string) => Buffer.from(s, 'hex');
  const ch = h(v.client_hello!);
  assert.equal(ch.readUInt16BE(7), 1, 'min_version');
  assert.equal(ch.readUInt16BE(9), 2, 'max_version');
  assert.equal(h(v.server_hello_signed_part!).readUInt16BE(3), 2, 'version chosen');
  assert.notEqual(v.transcript_hash, file.outputs.transcript_hash, 'the version is in the transcript');
  const th = createHash('sha256').update(h(v.client_hello!)).update(h(v.server_hello_signed_part!)).digest();
  const master = Buffer.from(hkdfSync('sha256', h(v.shared_secret!), th, Buffer.from('CMSP v1 master'), 32));
  assert.equal(Buffer.from(hkdfSync('sha256', master, Buffer.alloc(0), Buffer.from('CMSP v1 exporter'), 32)).toString('hex'), v.exporter);
  assert.notEqual(v.exporter, file.outputs.exporter, 'the exporter is bound to the transcript');
  const open = (recHex: string, seq: number) => {
    const rec = h(recHex);
    const nonce = h(v.c2s_iv!);
    nonce[11]! ^= seq;
    const d = createDecipheriv('aes-256-gcm', h(v.c2s_key!), nonce);
    d.setAAD(rec.subarray(0, 5));
    d.setAuthTag(rec.subarray(rec.length - 16));
    return Buffer.concat([d.update(rec.subarray(5, rec.length - 16)), d.final()]);
  };
  // seq 1: one message, preceded by its length.
  const one = open(v.client_ping_record!, 1);
  assert.equal(one.readUInt16BE(0), one.length - 2);
  assert.equal(one.subarray(2).toString('hex'), v.ping_request_cbor);
  // seq 2: two messages in one record, each preceded by its length.
  const batch = open(v.client_batch_record!, 2);
  assert.equal(batch.toString('hex'), v.batch_plaintext);
  const first = batch.readUInt16BE(0);
  const second = batch.readUInt16BE(2 + first);
  assert.equal(2 + first + 2 + second, batch.length);
  assert.deepEqual(decodeMessage(batch.subarray(2, 2 + first)), { kind: 'request', id: 2, command: 'ping', payload: {}, stream: false });
  assert.deepEqual(decodeMessage(batch.subarray(4 + first)), { kind: 'request', id: 3, command: 'ping', payload: { data: new Uint8Array(Buffer.from('ab')) }, stream: false });
});

test('docs/PROTOCOL.md prints exactly the recorded version 2 vectors', () => {
  const at = doc.indexOf('### 10.1');
  assert.ok(at > 0, 'PROTOCOL.md has section 10.1');
  const flat = doc.slice(at).replace(/\s+/g, '');
  for (const [name, value] of Object.entries(fileV2.outputs)) assert.ok(flat.includes(`${name}=${value}`), `PROTOCOL.md 10.1 lacks ${name}`);
  assert.ok(flat.includes(`signature=${fileV2.inputs.signature}`), 'PROTOCOL.md 10.1 lacks the version 2 signature');
});
