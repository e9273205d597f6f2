import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createCipheriv, createDecipheriv, createPublicKey, diffieHellman, generateKeyPairSync, sign, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { createRecordCipher, RECORD_CIPHER_ENV, recordCipherBackend, type RecordCipher, type RecordCipherImpl } from '../crypto/record-cipher.js';
import { VECTOR_FILE, VECTOR_FILE_V2, type Vectors } from './helpers/vectors.js';

/**
 * The record cipher (crypto/record-cipher.ts, issue 13 "per-record cost"): the native addon
 * equals node:crypto, the reference, on the protocol vectors of both versions and on random
 * inputs; a bad tag is refused without output and without using up a record number; record
 * numbers (and so nonces) never repeat under one key, also when more directions are in use than
 * the addon keeps keyed contexts for.
 */
const IMPLS: RecordCipherImpl[] = ['native', 'node'];
const h = (s: string) => Buffer.from(s, 'hex');
const TAG = 16;
const HEADER = 5;

test('npm ci built the addon and it is the default (a missing build fails here, not only in the benchmarks)', () => {
  assert.deepEqual(recordCipherBackend(), { impl: 'native' });
});

/** Seals `pt` as one record of `type` (header as associated data), as the record layer does. */
function sealRecord(c: RecordCipher, type: number, pt: Uint8Array): Buffer {
  const rec = Buffer.alloc(HEADER + pt.length + TAG);
  rec[0] = type;
  rec.writeUInt32BE(pt.length + TAG, 1);
  assert.equal(c.seal(rec.subarray(0, HEADER), pt, undefined, rec, HEADER), pt.length + TAG);
  return rec;
}

function openRecord(c: RecordCipher, rec: Buffer): Buffer | undefined {
  const out = Buffer.alloc(rec.length - HEADER - TAG);
  const n = c.open(rec.subarray(0, HEADER), rec.subarray(HEADER), out, 0);
  return n < 0 ? undefined : out.subarray(0, n);
}

for (const [name, fileName] of [['version 1', VECTOR_FILE], ['version 2', VECTOR_FILE_V2]] as const) {
  test(`${name} vectors: both implementations open the client's records and seal them again byte for byte`, () => {
    const v = (JSON.parse(readFileSync(fileName, 'utf8')) as { outputs: Vectors }).outputs;
    const records = [v.client_finished_record!, v.client_ping_record!, ...(v.client_batch_record ? [v.client_batch_record] : [])].map(h);
    for (const impl of IMPLS) {
      const opener = createRecordCipher(h(v.c2s_key!), h(v.c2s_iv!), 'open', impl);
      const sealer = createRecordCipher(h(v.c2s_key!), h(v.c2s_iv!), 'seal', impl);
      records.forEach((rec, seq) => {
        assert.equal(opener.sequence, seq);
        const pt = openRecord(opener, rec);
        assert.ok(pt, `${impl}: record ${seq} opens`);
        if (seq === 0) assert.equal(pt.toString('hex'), v.client_finished);
        if (seq === 2) assert.equal(pt.toString('hex'), v.batch_plaintext);
        assert.equal(sealRecord(sealer, rec[0]!, pt).toString('hex'), rec.toString('hex'), `${impl}: record ${seq} seals to the vector`);
      });
      opener.destroy();
      sealer.destroy();
    }
  });
}

test('random keys, IVs, headers and plaintexts: native and node:crypto agree record by record and open each other', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.uint8Array({ minLength: 12, maxLength: 12 }),
      fc.array(fc.tuple(fc.uint8Array({ minLength: 5, maxLength: 5 }), fc.uint8Array({ maxLength: 300 }), fc.option(fc.uint8Array({ maxLength: 300 }), { nil: undefined })), { minLength: 1, maxLength: 8 }),
      (key, iv, recs) => {
        const ns = createRecordCipher(key, iv, 'seal', 'native');
        const rs = createRecordCipher(key, iv, 'seal', 'node');
        const no = createRecordCipher(key, iv, 'open', 'native');
        const ro = createRecordCipher(key, iv, 'open', 'node');
        for (const [aad, head, tail] of recs) {
          const len = head.length + (tail?.length ?? 0);
          // At an offset, into a larger buffer: the bytes around the record stay untouched.
          const a = Buffer.alloc(len + TAG + 7, 0xaa);
          const b = Buffer.alloc(len + TAG + 7, 0xaa);
          assert.equal(ns.seal(aad, head, tail, a, 3), len + TAG);
          assert.equal(rs.seal(aad, head, tail, b, 3), len + TAG);
          assert.ok(a.equals(b));
          assert.deepEqual([...a.subarray(0, 3), ...a.subarray(3 + len + TAG)], new Array(7).fill(0xaa));
          const sealed = a.subarray(3, 3 + len + TAG);
          const want = Buffer.concat([head, tail ?? new Uint8Array(0)]);
          const x = Buffer.alloc(len);
          const y = Buffer.alloc(len);
          assert.equal(no.open(aad, sealed, x, 0), len);
          assert.equal(ro.open(aad, Buffer.from(sealed), y, 0), len);
          assert.ok(x.equals(want) && y.equals(want));
        }
        for (const c of [ns, rs, no, ro]) c.destroy();
      },
    ),
    { numRuns: 200 },
  );
});

test('a record opens in place (output over its own ciphertext)', () => {
  for (const impl of IMPLS) {
    const key = Buffer.alloc(32, 1);
    const iv = Buffer.alloc(12, 2);
    const rec = sealRecord(createRecordCipher(key, iv, 'seal', impl), 23, Buffer.from('in place, please'));
    const body = rec.subarray(HEADER);
    assert.equal(createRecordCipher(key, iv, 'open', impl).open(rec.subarray(0, HEADER), body, body, 0), 16);
    assert.equal(body.subarray(0, 16).toString(), 'in place, please');
  }
});

test('a changed bit anywhere (header, ciphertext, tag) is refused: no plaintext out, the record number stays', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 200 }), fc.nat(), fc.integer({ min: 0, max: 7 }), (pt, where, bit) => {
      for (const impl of IMPLS) {
        const key = Buffer.alloc(32, 3);
        const iv = Buffer.alloc(12, 4);
        const rec = sealRecord(createRecordCipher(key, iv, 'seal', impl), 23, pt);
        const bad = Buffer.from(rec);
        bad[where % bad.length]! ^= 1 << bit;
        const opener = createRecordCipher(key, iv, 'open', impl);
        const out = Buffer.alloc(pt.length, 0x55);
        assert.equal(opener.open(bad.subarray(0, HEADER), bad.subarray(HEADER), out, 0), -1, `${impl} refuses`);
        assert.ok(out.every((b) => b === 0), `${impl} leaves no plaintext behind`);
        assert.equal(opener.sequence, 0);
        // The genuine record still opens under the same number afterwards.
        assert.deepEqual(openRecord(opener, rec), Buffer.from(pt));
        assert.equal(opener.sequence, 1);
      }
    }),
    { numRuns: 100 },
  );
});

test('a refused record leaves nothing on OpenSSL\'s error queue: the next unrelated node:crypto calls of the thread work', () => {
  // A peer's forged records must not make the server's next key exchange, signature or decryption
  // fail with a stale error (Node reads the thread's OpenSSL error queue after its calls).
  const key = Buffer.alloc(32, 5);
  const iv = Buffer.alloc(12, 6);
  const rec = sealRecord(createRecordCipher(key, iv, 'seal', 'native'), 23, Buffer.from('forged'));
  rec[rec.length - 1]! ^= 1;
  const opener = createRecordCipher(key, iv, 'open', 'native');
  for (let i = 0; i < 20; i++) {
    assert.equal(opener.open(rec.subarray(0, HEADER), rec.subarray(HEADER), Buffer.alloc(6), 0), -1);
    assert.equal(opener.openAt(Buffer.from(rec), 0, HEADER, rec.length - HEADER), -1);
  }
  const a = generateKeyPairSync('x25519');
  const b = generateKeyPairSync('x25519');
  assert.equal(diffieHellman({ privateKey: a.privateKey, publicKey: b.publicKey }).length, 32);
  const signer = generateKeyPairSync('ed25519');
  assert.ok(verify(null, Buffer.from('m'), signer.publicKey, sign(null, Buffer.from('m'), signer.privateKey)));
  assert.equal(createPublicKey({ key: a.publicKey.export({ format: 'der', type: 'spki' }), format: 'der', type: 'spki' }).asymmetricKeyType, 'x25519');
  const c = createCipheriv('aes-256-gcm', key, iv);
  const ct = Buffer.concat([c.update('ok'), c.final()]);
  const d = createDecipheriv('aes-256-gcm', key, iv);
  d.setAuthTag(c.getAuthTag());
  assert.equal(Buffer.concat([d.update(ct), d.final()]).toString(), 'ok');
});

test('every seal uses the next record number: nonce = IV XOR n, never repeated, also with more directions than keyed contexts', () => {
  const key = Buffer.alloc(32, 5);
  // 150 directions sealed round robin: more than the addon's pool of keyed contexts (64), so
  // contexts are taken over and re-keyed between records; each direction keeps its own count.
  const dirs = Array.from({ length: 150 }, (_, i) => {
    const iv = Buffer.alloc(12, 6);
    iv.writeUInt32BE(i, 0);
    return { iv, c: createRecordCipher(i % 2 ? key : Buffer.alloc(32, i), iv, 'seal', 'native'), k: i % 2 ? key : Buffer.alloc(32, i) };
  });
  const pt = Buffer.from('the same plaintext every time');
  const seen = new Set<string>();
  for (let n = 0; n < 4; n++) {
    for (const d of dirs) {
      assert.equal(d.c.sequence, n);
      const out = Buffer.alloc(pt.length + TAG);
      d.c.seal(Buffer.alloc(5), pt, undefined, out, 0);
      const nonce = Buffer.from(d.iv);
      nonce[11]! ^= n;
      const ref = createCipheriv('aes-256-gcm', d.k, nonce);
      ref.setAAD(Buffer.alloc(5));
      const want = Buffer.concat([ref.update(pt), ref.final(), ref.getAuthTag()]);
      assert.ok(out.equals(want), `direction ${d.iv.readUInt32BE(0)}, record ${n}`);
      const hex = out.toString('hex');
      assert.ok(!seen.has(hex), 'no two records are alike');
      seen.add(hex);
    }
  }
});

test('misuse throws: wrong role, destroyed cipher, output too small, wrong key or IV length', () => {
  for (const impl of IMPLS) {
    const key = Buffer.alloc(32, 8);
    const iv = Buffer.alloc(12, 9);
    const s = createRecordCipher(key, iv, 'seal', impl);
    const o = createRecordCipher(key, iv, 'open', impl);
    assert.throws(() => s.open(Buffer.alloc(5), Buffer.alloc(20), Buffer.alloc(4), 0));
    assert.throws(() => o.seal(Buffer.alloc(5), Buffer.alloc(4), undefined, Buffer.alloc(20), 0));
    assert.throws(() => s.seal(Buffer.alloc(5), Buffer.alloc(4), undefined, Buffer.alloc(19), 0));
    assert.throws(() => s.seal(Buffer.alloc(5), Buffer.alloc(4), undefined, Buffer.alloc(20), 1));
    assert.equal(s.sequence, 0, 'a refused call uses no record number');
    s.destroy();
    assert.throws(() => s.seal(Buffer.alloc(5), Buffer.alloc(4), undefined, Buffer.alloc(20), 0));
    assert.throws(() => createRecordCipher(Buffer.alloc(16), iv, 'seal', impl), RangeError);
    assert.throws(() => createRecordCipher(key, Buffer.alloc(8), 'seal', impl), RangeError);
  }
});

test('COMMUSIC_RECORD_CIPHER=node (or a missing addon): node:crypto carries the records, and says why', () => {
  // A process of its own: the choice is made once, when crypto/record-cipher.js loads.
  const script = `
    const { recordCipherBackend } = await import(${JSON.stringify(new URL('../crypto/record-cipher.js', import.meta.url).href)});
    const { establishedPair } = await import(${JSON.stringify(new URL('./helpers/pair.js', import.meta.url).href)});
    const { client, server, serverEvents } = establishedPair({ rekeyAfterRecords: 3 });
    for (let i = 0; i < 5; i++) client.sendMessage({ kind: 'request', id: i + 1, command: 'ping', payload: {}, stream: false });
    server.receive(Buffer.concat(client.takeOutput()));
    let got = 0;
    for (let e = server.nextEvent(); e.type === 'message'; e = server.nextEvent()) got++;
    console.log(JSON.stringify({ backend: recordCipherBackend(), established: serverEvents.some((e) => e.type === 'established'), got }));
  `;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, [RECORD_CIPHER_ENV]: 'node' } });
  assert.deepEqual(JSON.parse(out.trim().split('\n').pop()!), { backend: { impl: 'node', reason: `${RECORD_CIPHER_ENV}=node` }, established: true, got: 5 });
});
