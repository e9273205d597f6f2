// Issue 15 point 4: the identity.keys NOTICE has a signed byte layout; docs/PROTOCOL.md 6.4 prints
// a test vector, checked here against the implementation and against bare node:crypto.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { constants, createHash, createPublicKey, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { rotationMessage, verifyRotation, type RotationStatement } from '../crypto/identity-rotation.js';
import { encodeIdentityNotice, parseIdentityNotice, pinsFromNotice } from '../protocol/identity-notice.js';
import { decodeMessage, encodeMessage } from '../protocol/messages.js';

const vec = JSON.parse(readFileSync(new URL('../../tests/vectors/identity-rotation.json', import.meta.url), 'utf8')) as {
  inputs: Record<string, string>;
  outputs: Record<string, string>;
  notice_cbor: string;
};
const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');
const h = (s: string) => Buffer.from(s, 'hex');
const statement: RotationStatement = {
  old: h(vec.inputs['oldSpki']!),
  new: h(vec.inputs['newSpki']!),
  time: Number(vec.inputs['time']),
  oldSignature: h(vec.inputs['oldSignature']!),
  newSignature: h(vec.inputs['newSignature']!),
};

test('the rotation statement vector: signed bytes, both signatures, fingerprints', () => {
  assert.equal(rotationMessage(statement.old, statement.new, statement.time).toString('hex'), vec.outputs['rotation_message']);
  assert.equal(verifyRotation(statement), true);
  assert.equal(createHash('sha256').update(statement.old).digest('hex'), vec.outputs['old_fingerprint']);
  assert.equal(createHash('sha256').update(statement.new).digest('hex'), vec.outputs['new_fingerprint']);
  // Each signature binds its key, the pair and the time.
  assert.equal(verifyRotation({ ...statement, time: statement.time + 1 }), false, 'another time');
  assert.equal(verifyRotation({ ...statement, oldSignature: statement.newSignature, newSignature: statement.oldSignature }), false, 'signatures swapped');
  assert.equal(verifyRotation({ ...statement, old: statement.new, new: statement.old }), false, 'keys swapped');
});

test('the rotation statement re-derived from the spec text with bare node:crypto', () => {
  const t = Buffer.alloc(8);
  t.writeBigUInt64BE(BigInt(vec.inputs['time']!));
  const msg = Buffer.concat([Buffer.from('CMSP identity rotation v1', 'ascii'), Buffer.from([0]), statement.old, statement.new, t]);
  assert.equal(msg.toString('hex'), vec.outputs['rotation_message']);
  for (const [spki, sig] of [[statement.old, statement.oldSignature], [statement.new, statement.newSignature]] as const) {
    const key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
    assert.equal(verify('sha256', msg, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, sig), true);
  }
});

test('the NOTICE vector: encoding, and what a client pinned to either key keeps', () => {
  const bytes = Buffer.from(encodeMessage({ kind: 'notice', event: 'identity.keys', payload: encodeIdentityNotice({ current: statement.new, previous: statement.old, rotations: [statement] }) }));
  assert.equal(bytes.toString('hex'), vec.notice_cbor);
  assert.equal(String(bytes.length), vec.outputs['notice_cbor_len']);
  assert.equal(createHash('sha256').update(bytes).digest('hex'), vec.outputs['notice_cbor_sha256']);
  const m = decodeMessage(h(vec.notice_cbor));
  assert.equal(m.kind, 'notice');
  const n = parseIdentityNotice(m.kind === 'notice' ? m.payload : undefined);
  assert.ok(n, 'the vector notice verifies');
  assert.deepEqual(pinsFromNotice(n, statement.new), [vec.outputs['new_fingerprint'], vec.outputs['old_fingerprint']]);
  assert.equal(pinsFromNotice(n, statement.old), undefined, 'a notice about another key than the session key is ignored');
});

test('docs/PROTOCOL.md prints exactly the recorded identity rotation vector', () => {
  const flat = doc.replace(/\s+/g, '');
  for (const [name, value] of [...Object.entries(vec.inputs), ...Object.entries(vec.outputs)]) {
    assert.ok(flat.includes(`${name}=${value}`), `PROTOCOL.md lacks ${name}`);
  }
});
