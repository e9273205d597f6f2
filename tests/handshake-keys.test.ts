import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import {
  credentialKeyFromPrivate,
  credentialSign,
  ephemeralFromPrivate,
  generateCredentialKey,
  generateEphemeral,
  HANDSHAKE_KEYS_ENV,
  handshakeKeysBackend,
  nativeHash,
  wipeEphemeral,
  x25519,
  type HandshakeKeyImpl,
} from '../crypto/handshake-keys.js';
import { hkdf, hkdfBlock, hkdfExpand, hkdfExtract, hmacSha256, sha256 } from '../crypto/handshake-crypto.js';

/**
 * The handshake's key exchange, signatures and hashes (issue 13): the native addon
 * (crypto/native/handshake_keys.c) against node:crypto, the RFC vectors and the protocol vectors.
 * The addon is built by `npm ci`; the tests insist on it, so a build that silently fell back to
 * node:crypto is noticed here.
 */
const IMPLS: HandshakeKeyImpl[] = ['native', 'node'];
const h = (s: string) => Buffer.from(s, 'hex');

test('the addon is loaded and passed its self test', () => {
  assert.deepEqual(handshakeKeysBackend(), { impl: 'native' });
  assert.ok(nativeHash());
});

// RFC 7748 section 6.1.
const ALICE = { priv: h('77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a'), pub: '8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a' };
const BOB = { priv: h('5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb'), pub: 'de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f' };
const SHARED = '4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742';

for (const impl of IMPLS) {
  test(`X25519 (${impl}): RFC 7748 6.1 keys and shared secret`, () => {
    const a = ephemeralFromPrivate(ALICE.priv, impl);
    const b = ephemeralFromPrivate(BOB.priv, impl);
    assert.equal(a.publicRaw.toString('hex'), ALICE.pub);
    assert.equal(b.publicRaw.toString('hex'), BOB.pub);
    assert.equal(x25519(a, b.publicRaw)?.toString('hex'), SHARED);
    assert.equal(x25519(b, a.publicRaw)?.toString('hex'), SHARED);
  });

  test(`X25519 (${impl}): low-order and malformed peer values give no secret`, () => {
    const own = generateEphemeral(impl);
    // RFC 7748 6.1 / the usual blocklist: 0, 1, a point of order 8, p - 1, p, p + 1.
    const bad = [
      '0000000000000000000000000000000000000000000000000000000000000000',
      '0100000000000000000000000000000000000000000000000000000000000000',
      'e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800',
      'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
      'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
      'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
    ];
    for (const b of bad) assert.equal(x25519(own, h(b)), undefined, b);
    assert.equal(x25519(own, Buffer.alloc(31, 9)), undefined);
    assert.equal(x25519(own, Buffer.alloc(33, 9)), undefined);
    // The key still works for a valid value after the refusals, and node:crypto is not handed a
    // stale OpenSSL error (the addon clears the thread's error queue when it refuses).
    assert.ok(x25519(own, ephemeralFromPrivate(BOB.priv, impl).publicRaw));
    for (const b of bad) x25519(own, h(b));
    assert.equal(ephemeralFromPrivate(ALICE.priv, 'node').publicRaw.toString('hex'), ALICE.pub);
  });

  test(`X25519 (${impl}): every key is fresh, and a wiped key agrees to nothing`, () => {
    const seen = new Set<string>();
    for (let i = 0; i < 50; i++) seen.add(generateEphemeral(impl).publicRaw.toString('hex'));
    assert.equal(seen.size, 50);
    const k = generateEphemeral(impl);
    const peer = generateEphemeral(impl).publicRaw;
    assert.ok(x25519(k, peer));
    wipeEphemeral(k);
    assert.equal(x25519(k, peer), undefined);
    wipeEphemeral(k); // twice is harmless
  });
}

test('X25519: native and node:crypto agree on random keys, in both roles', () => {
  for (let i = 0; i < 40; i++) {
    const pa = randomBytes(32);
    const pb = randomBytes(32);
    const an = ephemeralFromPrivate(pa, 'native');
    const ar = ephemeralFromPrivate(pa, 'node');
    const bn = generateEphemeral('native');
    const br = generateEphemeral('node');
    assert.deepEqual(an.publicRaw, ar.publicRaw);
    assert.deepEqual(x25519(an, bn.publicRaw), x25519(bn, ar.publicRaw));
    assert.deepEqual(x25519(ar, br.publicRaw), x25519(br, an.publicRaw));
    assert.deepEqual(ephemeralFromPrivate(pb, 'native').publicRaw, ephemeralFromPrivate(pb, 'node').publicRaw);
  }
});

// RFC 8032 section 7.1, tests 1 and 2.
const ED_VECTORS = [
  {
    seed: '9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60',
    pub: 'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a',
    msg: '',
    sig: 'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b',
  },
  {
    seed: '4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb',
    pub: '3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c',
    msg: '72',
    sig: '92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00',
  },
];

for (const impl of IMPLS) {
  test(`Ed25519 (${impl}): RFC 8032 7.1 keys and signatures, signing twice with one key`, () => {
    for (const v of ED_VECTORS) {
      const k = credentialKeyFromPrivate(h(v.seed), impl);
      assert.equal(k.publicRaw.toString('hex'), v.pub);
      assert.equal(credentialSign(k, h(v.msg)).toString('hex'), v.sig);
      assert.equal(credentialSign(k, h(v.msg)).toString('hex'), v.sig); // the kept context signs again
    }
  });
}

test('Ed25519: native and node:crypto give the same keys and signatures', () => {
  for (let i = 0; i < 30; i++) {
    const seed = randomBytes(32);
    const n = credentialKeyFromPrivate(seed, 'native');
    const r = credentialKeyFromPrivate(seed, 'node');
    assert.deepEqual(n.publicRaw, r.publicRaw);
    const msg = randomBytes(i * 37);
    assert.deepEqual(credentialSign(n, msg), credentialSign(r, msg));
  }
  const a = generateCredentialKey('native');
  const b = generateCredentialKey('native');
  assert.notDeepEqual(a.publicRaw, b.publicRaw);
  // An X25519 key is not a credential key: refused, not misused.
  assert.throws(() => credentialSign(generateEphemeral('native'), Buffer.alloc(8)));
});

test('SHA-256, HMAC-SHA256 and HKDF-SHA256 through the addon equal node:crypto', () => {
  // RFC 5869 A.1 - A.3 (SHA-256).
  const a1 = hkdf(Buffer.alloc(22, 0x0b), h('000102030405060708090a0b0c'), '\xf0', 42);
  assert.equal(a1.length, 42);
  const ikm2 = Buffer.from(Array.from({ length: 80 }, (_, i) => i));
  const salt2 = Buffer.from(Array.from({ length: 80 }, (_, i) => 0x60 + i));
  const info2 = Buffer.from(Array.from({ length: 80 }, (_, i) => 0xb0 + i));
  const okm2 = Buffer.alloc(82);
  nativeHash()!.hkdfSha256(ikm2, salt2, info2, okm2, true);
  assert.equal(
    okm2.toString('hex'),
    'b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87',
  );
  assert.equal(hkdf(Buffer.alloc(22, 0x0b), Buffer.alloc(0), '', 42).toString('hex'), '8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8');
  for (let i = 0; i < 60; i++) {
    const ikm = randomBytes(i % 5 === 0 ? 0 : 1 + (i * 7) % 100);
    const salt = randomBytes([0, 13, 32, 64, 65, 200][i % 6]!);
    const info = `CMSP test label ${i}`;
    const len = 1 + ((i * 53) % 300);
    const ref = Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from(info, 'ascii'), len));
    assert.deepEqual(hkdf(ikm, salt, info, len), ref);
    assert.deepEqual(hkdfBlock(ikm, salt, info, len), ref);
    const prk = hkdfExtract(ikm, salt);
    assert.deepEqual(prk, createHmac('sha256', salt.length > 0 ? salt : Buffer.alloc(32)).update(ikm).digest());
    assert.deepEqual(hkdfExpand(prk, info, len), ref);
    assert.deepEqual(hmacSha256(salt, ikm), createHmac('sha256', salt).update(ikm).digest());
    const parts = [ikm, salt, Buffer.from(info), randomBytes(i)].slice(0, 1 + (i % 4));
    const ref2 = createHash('sha256');
    for (const p of parts) ref2.update(p);
    assert.deepEqual(sha256(...parts), ref2.digest());
  }
  // More parts than the addon takes go through node:crypto: the same digest.
  const five = [1, 2, 3, 4, 5].map((n) => Buffer.alloc(n, n));
  assert.deepEqual(sha256(...five), createHash('sha256').update(Buffer.concat(five)).digest());
  assert.throws(() => hkdfExpand(Buffer.alloc(32), 'x', 255 * 32 + 1), RangeError);
});

test(`${HANDSHAKE_KEYS_ENV}=node: node:crypto does the handshake, says why, and reproduces the protocol vectors`, () => {
  // A process of its own: the choice is made once, when crypto/handshake-keys.js loads.
  const u = (p: string) => JSON.stringify(new URL(p, import.meta.url).href);
  const script = `
    import { readFileSync } from 'node:fs';
    const { handshakeKeysBackend } = await import(${u('../crypto/handshake-keys.js')});
    const { testIdentity, testCredential, drain } = await import(${u('./helpers/pair.js')});
    const { ServerSession } = await import(${u('../protocol/server-session.js')});
    const { ClientSession, pinFingerprint } = await import(${u('../protocol/client-session.js')});
    const v1 = await import(${u('./helpers/vectors.js')});
    const v3 = await import(${u('./helpers/vectors-v3.js')});
    const server = new ServerSession({ identity: testIdentity(), credential: testCredential() });
    const client = new ClientSession({ acceptServerKey: pinFingerprint(testIdentity().fingerprint), now: () => Date.now() });
    client.start();
    server.receive(Buffer.concat(client.takeOutput()));
    drain(server);
    client.receive(Buffer.concat(server.takeOutput()));
    drain(client);
    server.receive(Buffer.concat(client.takeOutput()));
    const serverEvents = drain(server);
    const same = (file, compute) => { const f = JSON.parse(readFileSync(file, 'utf8')); return JSON.stringify(compute(f.inputs)) === JSON.stringify(f.outputs); };
    console.log(JSON.stringify({
      backend: handshakeKeysBackend(),
      established: serverEvents.some((e) => e.type === 'established') && client.negotiatedVersion === 3,
      v1: same(v1.VECTOR_FILE, (i) => v1.computeVectors(i)),
      v2: same(v1.VECTOR_FILE_V2, (i) => v1.computeVectors(i, 2)),
      v3: same(v3.VECTOR_FILE_V3, (i) => v3.computeVectorsV3(i)),
    }));
  `;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, [HANDSHAKE_KEYS_ENV]: 'node' } });
  assert.deepEqual(JSON.parse(out.trim().split('\n').pop()!), { backend: { impl: 'node', reason: `${HANDSHAKE_KEYS_ENV}=node` }, established: true, v1: true, v2: true, v3: true });
});
