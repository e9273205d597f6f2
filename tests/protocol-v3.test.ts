import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { constants, createDecipheriv, createHash, createHmac, createPublicKey, hkdfSync, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { generateCredentialKey } from '../crypto/handshake-crypto.js';
import { generateIdentity } from '../crypto/identity.js';
import { ClientSession, pinFingerprint, type ClientEvent } from '../protocol/client-session.js';
import {
  CREDENTIAL_BACKDATE_MS,
  CREDENTIAL_CLOCK_SKEW_MS,
  CREDENTIAL_LIFETIME_MS,
  CREDENTIAL_MAX_VALIDITY_MS,
  CREDENTIAL_RENEW_BEFORE_MS,
  SERVER_HELLO_LEN,
  SERVER_HELLO_V3_LEN,
} from '../protocol/constants.js';
import { CredentialCache, issueCredential, type ServerCredential } from '../protocol/credential.js';
import { decodeMessage } from '../protocol/messages.js';
import { ServerSession } from '../protocol/server-session.js';
import { CredentialIssuer } from '../daemon/edge/credentials.js';
import { connect } from '../client/connection.js';
import { computeVectorsV3, VECTOR_FILE_V3, type VectorInputsV3 } from './helpers/vectors-v3.js';
import { concat, drain, testCredential, testIdentity } from './helpers/pair.js';
import { startDaemon, type TestDaemon } from './helpers/daemon.js';

/** Protocol version 3 (docs/PROTOCOL.md 3.5, 4.1, 8, 10.2): delegated credentials. */

const file = JSON.parse(readFileSync(VECTOR_FILE_V3, 'utf8')) as { inputs: VectorInputsV3; outputs: Record<string, string> };
const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');
const h = (s: string) => Buffer.from(s, 'hex');

test('version 3: the implementation reproduces every recorded test vector', () => {
  assert.deepEqual(computeVectorsV3(file.inputs), file.outputs);
});

/** HKDF-Expand (RFC 5869 2.3) written out with bare HMAC, as PROTOCOL.md 4.1 uses it. */
function expand(prk: Buffer, info: string, n: number): Buffer {
  const out: Buffer[] = [];
  let t = Buffer.alloc(0);
  for (let i = 1; Buffer.concat(out).length < n; i++) {
    t = createHmac('sha256', prk).update(Buffer.concat([t, Buffer.from(info, 'ascii'), Buffer.of(i)])).digest();
    out.push(t);
  }
  return Buffer.concat(out).subarray(0, n);
}

test('version 3: the vectors follow sections 3.5 and 4.1 as written, re-derived with bare node:crypto', () => {
  const v = file.outputs;
  const inp = file.inputs;
  const ch = h(v.client_hello!);
  assert.equal(ch.readUInt16BE(9), 3, 'max_version 3');
  const sh = h(v.server_hello_signed_part!);
  assert.equal(sh.length, 671);
  assert.equal(sh[0], 0x02);
  assert.equal(sh.readUInt16BE(1), 732, 'body length');
  assert.equal(sh.readUInt16BE(3), 3, 'version chosen');
  const spki = sh.subarray(69, 363);
  assert.equal(createHash('sha256').update(spki).digest('hex'), v.identity_fingerprint);
  // The credential: valid_from, valid_until, version 3, scheme 0x0807, Ed25519 key.
  const cred = sh.subarray(363, 415);
  assert.equal(cred.toString('hex'), v.credential);
  assert.equal(cred.readBigUInt64BE(0), BigInt(inp.validFrom));
  assert.equal(cred.readBigUInt64BE(8), BigInt(inp.validUntil));
  assert.equal(cred.readUInt16BE(16), 3);
  assert.equal(cred.readUInt16BE(18), 0x0807);
  assert.equal(cred.subarray(20).toString('hex'), v.credential_public);
  const credSig = sh.subarray(415, 671);
  assert.equal(credSig.toString('hex'), inp.credentialSignature);
  const credInput = Buffer.concat([Buffer.from('CMSP v3 delegated credential\0', 'ascii'), spki, cred]);
  assert.equal(credInput.toString('hex'), v.credential_signature_input);
  const identityKey = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  assert.ok(verify('sha256', credInput, { key: identityKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, credSig), 'the identity key signed the credential');
  // The transcript signature: Ed25519 by the credential key.
  const th = createHash('sha256').update(ch).update(sh).digest();
  assert.equal(th.toString('hex'), v.transcript_hash);
  const sigInput = Buffer.concat([Buffer.from('CMSP v3 server signature\0', 'ascii'), th]);
  assert.equal(sigInput.toString('hex'), v.signature_input);
  const edKey = createPublicKey({ key: Buffer.concat([h('302a300506032b6570032100'), cred.subarray(20)]), format: 'der', type: 'spki' });
  assert.ok(verify(null, sigInput, edKey, h(v.signature!)), 'the credential key signed the transcript');
  // Key schedule 4.1.
  const fh = createHash('sha256').update(ch).update(sh).update(h(v.signature!)).digest();
  assert.equal(fh.toString('hex'), v.finished_hash);
  const block = Buffer.from(hkdfSync('sha256', h(v.shared_secret!), fh, Buffer.from('CMSP v3 key block', 'ascii'), 248));
  const c2s = block.subarray(0, 32);
  assert.equal(c2s.toString('hex'), v.c2s_traffic_secret);
  assert.equal(block.subarray(32, 64).toString('hex'), v.s2c_traffic_secret);
  assert.equal(block.subarray(64, 96).toString('hex'), v.c2s_key);
  assert.equal(block.subarray(96, 108).toString('hex'), v.c2s_iv);
  assert.equal(block.subarray(108, 140).toString('hex'), v.s2c_key);
  assert.equal(block.subarray(140, 152).toString('hex'), v.s2c_iv);
  assert.equal(block.subarray(152, 184).toString('hex'), v.client_finished);
  assert.equal(block.subarray(184, 216).toString('hex'), v.server_finished);
  assert.equal(block.subarray(216, 248).toString('hex'), v.exporter);
  // HKDF-Expand's blocks do not depend on L: a 216-byte block is the same first 216 bytes.
  assert.deepEqual(Buffer.from(hkdfSync('sha256', h(v.shared_secret!), fh, Buffer.from('CMSP v3 key block', 'ascii'), 216)), block.subarray(0, 216));
  // Section 6.6: the membership proof of peer.auth on this session, both directions.
  const peerKey = Buffer.from(hkdfSync('sha256', h(inp.masterKey), Buffer.from('commusic-cluster'), Buffer.from('commusic/cluster/peer-auth/v1'), 32));
  assert.equal(peerKey.toString('hex'), v.peer_key);
  const proof = (role: string, from: string, to: string) =>
    createHmac('sha256', peerKey).update(Buffer.concat([Buffer.from(`commusic peer auth v1\0${role}\0${from}\0${to}\0`, 'ascii'), block.subarray(216, 248)])).digest('hex');
  assert.equal(proof('client', inp.peerFrom, inp.peerTo), v.peer_proof_client);
  assert.equal(proof('server', inp.peerTo, inp.peerFrom), v.peer_proof_server);
  const next = expand(c2s, 'CMSP v3 key update', 32);
  assert.equal(next.toString('hex'), v.c2s_traffic_secret_after_key_update);
  const nextKeyIv = expand(next, 'CMSP v3 key iv', 44);
  assert.equal(nextKeyIv.subarray(0, 32).toString('hex'), v.c2s_key_after_key_update);
  assert.equal(nextKeyIv.subarray(32).toString('hex'), v.c2s_iv_after_key_update);
  // The ping record (seq 1), a batch of one as in version 2.
  const rec = h(v.client_ping_record!);
  const nonce = h(v.c2s_iv!);
  nonce[11]! ^= 1;
  const d = createDecipheriv('aes-256-gcm', h(v.c2s_key!), nonce);
  d.setAAD(rec.subarray(0, 5));
  d.setAuthTag(rec.subarray(rec.length - 16));
  const pt = Buffer.concat([d.update(rec.subarray(5, rec.length - 16)), d.final()]);
  assert.equal(pt.readUInt16BE(0), 9);
  assert.equal(pt.subarray(2).toString('hex'), v.ping_request_cbor);
  assert.deepEqual(decodeMessage(pt.subarray(2)), { kind: 'request', id: 1, command: 'ping', payload: {}, stream: false });
});

test('version 3: docs/PROTOCOL.md prints exactly the recorded vectors', () => {
  const flat = doc.replace(/\s+/g, '');
  const at = flat.indexOf('###10.2');
  assert.ok(at > 0, 'PROTOCOL.md has section 10.2');
  const section = flat.slice(at);
  for (const [name, value] of Object.entries(file.outputs)) assert.ok(section.includes(`${name}=${value}`), `PROTOCOL.md 10.2 lacks ${name}`);
  for (const [name, value] of Object.entries(file.inputs)) {
    if (name === 'identityPem' || name === 'clientRandom' || name === 'serverRandom' || name.endsWith('EphemeralPrivate')) continue;
    assert.ok(section.includes(`${name}=${value}`), `PROTOCOL.md 10.2 lacks input ${name}`);
  }
});

// ---------------------------------------------------------------------------------------------
// Handshakes in memory

interface Run {
  client: ClientSession;
  server: ServerSession;
  clientEvents: ClientEvent[];
}

/** A handshake where `tamper` may rewrite each flight: 'ch' the ClientHello, 'sh' the server's flight. */
function run(opts: { clientMax?: number; serverVersions?: number[]; credential?: ServerCredential; now?: number; tamper?: (which: 'ch' | 'sh', b: Buffer) => Buffer } = {}): Run {
  const identity = testIdentity();
  const server = new ServerSession({ identity, credential: opts.credential ?? testCredential(), ...(opts.serverVersions ? { versions: opts.serverVersions } : {}) });
  const client = new ClientSession({ acceptServerKey: pinFingerprint(identity.fingerprint), maxVersion: opts.clientMax ?? 3, now: () => opts.now ?? Date.now() });
  const t = opts.tamper ?? ((_w, b) => b);
  client.start();
  server.receive(t('ch', concat(client.takeOutput())));
  drain(server);
  client.receive(t('sh', concat(server.takeOutput())));
  return { client, server, clientEvents: drain(client) };
}

const errorCode = (r: Run) => {
  const e = r.clientEvents.find((x) => x.type === 'error');
  return e && e.type === 'error' ? e.error.code : undefined;
};

test('version 3 is negotiated when both offer it; the server hello is 735 bytes; a server without a credential serves version 2', () => {
  let hello = 0;
  const r = run({ tamper: (w, b) => ((hello = w === 'sh' ? b.length : hello), b) });
  assert.equal(r.clientEvents[0]?.type, 'established');
  assert.equal(r.client.negotiatedVersion, 3);
  assert.equal(r.server.negotiatedVersion, 3);
  assert.ok(hello > SERVER_HELLO_V3_LEN, 'hello and Finished record');
  const identity = testIdentity();
  const plain = new ServerSession({ identity });
  const client = new ClientSession({ acceptServerKey: pinFingerprint(identity.fingerprint), now: Date.now });
  client.start();
  plain.receive(concat(client.takeOutput()));
  drain(plain);
  client.receive(concat(plain.takeOutput()));
  assert.equal(drain(client)[0]?.type, 'established');
  assert.equal(client.negotiatedVersion, 2);
  const noClock = new ClientSession({ acceptServerKey: () => true });
  noClock.start();
  assert.equal(concat(noClock.takeOutput()).readUInt16BE(9), 2, 'a client without a clock offers at most version 2');
});

test('downgrade, client to server: max_version 3 rewritten to 2 in the ClientHello breaks the identity signature', () => {
  const r = run({ tamper: (w, b) => (w === 'ch' ? (b.writeUInt16BE(2, 9), b) : b) });
  assert.equal(r.server.negotiatedVersion, 2, 'the server was fooled into version 2');
  assert.equal(errorCode(r), 'BAD_SIGNATURE', 'the client sees the transcript changed');
});

test('downgrade, server to client: a version 3 ServerHello rewritten to version 2 is refused', () => {
  // The version field alone: the body length no longer fits the version.
  const field = run({ tamper: (w, b) => (w === 'sh' ? (b.writeUInt16BE(2, 3), b) : b) });
  assert.equal(errorCode(field), 'BAD_HANDSHAKE_MESSAGE');
  // A whole version 2 layout built from the version 3 fields, the Ed25519 signature padded in
  // place of the identity signature: the identity signature does not verify.
  const rebuilt = run({
    tamper: (w, b) => {
      if (w !== 'sh') return b;
      const v2 = Buffer.alloc(SERVER_HELLO_LEN);
      v2[0] = 0x02;
      v2.writeUInt16BE(616, 1);
      v2.writeUInt16BE(2, 3);
      b.copy(v2, 5, 5, 363);
      b.copy(v2, 363, 671, 735);
      return Buffer.concat([v2, b.subarray(SERVER_HELLO_V3_LEN)]);
    },
  });
  assert.equal(errorCode(rebuilt), 'BAD_SIGNATURE');
  // And upward: a version 2 client's range rewritten to 1..3 gets a version 3 answer it refuses.
  const up = run({ clientMax: 2, tamper: (w, b) => (w === 'ch' ? (b.writeUInt16BE(3, 9), b) : b) });
  assert.equal(up.server.negotiatedVersion, 3);
  assert.equal(errorCode(up), 'VERSION_UNSUPPORTED');
});

test('a changed credential, credential signature or transcript signature is refused', () => {
  for (const [at, code] of [
    [363 + 9, 'BAD_CREDENTIAL'], // valid_until moved: the identity signature no longer covers it
    [363 + 30, 'BAD_CREDENTIAL'], // the credential key
    [415 + 100, 'BAD_CREDENTIAL'], // the identity's signature over the credential
    [671 + 10, 'BAD_SIGNATURE'], // the Ed25519 signature over the transcript
    [40, 'BAD_SIGNATURE'], // the server share
  ] as const) {
    const r = run({ tamper: (w, b) => (w === 'sh' ? ((b[at]! ^= 0x01), b) : b) });
    assert.equal(errorCode(r), code, `byte ${at}`);
  }
});

test('a credential signed by another RSA key than the pinned identity is refused', () => {
  const other = generateIdentity();
  const foreign = issueCredential(other, generateCredentialKey(), Date.now());
  // The server presents the pinned identity's SPKI with a credential the other key signed.
  const forged: ServerCredential = { ...foreign, spki: testIdentity().spki };
  assert.equal(errorCode(run({ credential: forged })), 'BAD_CREDENTIAL');
  // Also when it is expired: a time error (which makes the SDK fall back to version 2) only for a
  // credential the identity key really signed; a forged expired one must not force the downgrade.
  assert.equal(errorCode(run({ credential: forged, now: forged.validUntil + CREDENTIAL_CLOCK_SKEW_MS + 1 })), 'BAD_CREDENTIAL');
  assert.equal(errorCode(run({ credential: forged, now: forged.validFrom - CREDENTIAL_CLOCK_SKEW_MS - 1 })), 'BAD_CREDENTIAL');
});

test('expired and not-yet-valid credentials are refused, with CREDENTIAL_CLOCK_SKEW_MS allowed at both ends', () => {
  const c = testCredential();
  const ok = (now: number) => run({ now }).clientEvents[0]?.type === 'established';
  assert.ok(ok(c.validUntil + CREDENTIAL_CLOCK_SKEW_MS), 'the last millisecond of the skew');
  assert.equal(errorCode(run({ now: c.validUntil + CREDENTIAL_CLOCK_SKEW_MS + 1 })), 'CREDENTIAL_EXPIRED');
  assert.ok(ok(c.validFrom - CREDENTIAL_CLOCK_SKEW_MS), 'the first millisecond of the skew');
  assert.equal(errorCode(run({ now: c.validFrom - CREDENTIAL_CLOCK_SKEW_MS - 1 })), 'CREDENTIAL_NOT_YET_VALID');
  // A window longer than the maximum is refused whenever it is used.
  const now = Date.now();
  const long = issueCredential(testIdentity(), generateCredentialKey(), now, { validFrom: now - 1000, validUntil: now - 1000 + CREDENTIAL_MAX_VALIDITY_MS + 1 });
  assert.equal(errorCode(run({ credential: long })), 'BAD_CREDENTIAL');
  const max = issueCredential(testIdentity(), generateCredentialKey(), now, { validFrom: now - 1000, validUntil: now - 1000 + CREDENTIAL_MAX_VALIDITY_MS });
  assert.equal(run({ credential: max }).clientEvents[0]?.type, 'established');
});

test('the credential cache skips the RSA check for a credential already verified, never the time check', () => {
  const identity = testIdentity();
  const cache = new CredentialCache(2);
  const once = (now: number) => {
    const server = new ServerSession({ identity, credential: testCredential() });
    const client = new ClientSession({ acceptServerKey: () => true, now: () => now, credentialCache: cache });
    client.start();
    server.receive(concat(client.takeOutput()));
    drain(server);
    client.receive(concat(server.takeOutput()));
    return drain(client)[0];
  };
  assert.equal(once(Date.now())?.type, 'established');
  assert.equal(cache.size, 1);
  assert.equal(once(Date.now())?.type, 'established');
  assert.equal(cache.size, 1, 'the same credential is one entry');
  const late = once(testCredential().validUntil + CREDENTIAL_CLOCK_SKEW_MS + 1);
  assert.ok(late?.type === 'error' && late.error.code === 'CREDENTIAL_EXPIRED', 'a cached credential still expires');
});

test('the issuer: a window of CREDENTIAL_LIFETIME_MS, renewed with a new key once under CREDENTIAL_RENEW_BEFORE_MS remain, re-issued under a new identity', () => {
  let now = 1_800_000_000_000;
  const issued: ServerCredential[] = [];
  const a = testIdentity();
  const issuer = new CredentialIssuer(a, () => now, (c) => issued.push(c));
  const first = issuer.current();
  assert.equal(first.validFrom, now - CREDENTIAL_BACKDATE_MS);
  assert.equal(first.validUntil, now + CREDENTIAL_LIFETIME_MS);
  assert.ok(first.validUntil - first.validFrom <= CREDENTIAL_MAX_VALIDITY_MS);
  now += CREDENTIAL_LIFETIME_MS - CREDENTIAL_RENEW_BEFORE_MS - 1;
  assert.equal(issuer.current(), first, 'not renewed before it is due');
  now += 2;
  const second = issuer.current();
  assert.notEqual(second, first);
  assert.ok(!second.key.publicRaw.equals(first.key.publicRaw), 'a renewal makes a new key');
  const b = generateIdentity();
  const third = issuer.reissue(b);
  assert.ok(third.spki.equals(b.spki), 'signed by the new identity key');
  assert.equal(issuer.current(), third);
  assert.equal(issued.length, 3);
  // Two members of a cluster share the identity key, never a credential key.
  const other = new CredentialIssuer(a, () => now);
  assert.ok(!other.current().key.publicRaw.equals(issuer.current().key.publicRaw));
  // The clock stepped back past the backdating: the credential would start in the future.
  const before = issuer.current();
  now = before.validFrom - 1;
  const stepped = issuer.current();
  assert.notEqual(stepped, before, 'not renewed after the clock stepped back');
  assert.ok(stepped.validFrom <= now);
});

// ---------------------------------------------------------------------------------------------
// Over TCP, on one daemon

let td: TestDaemon;
after(async () => td?.stop());

test('over TCP: versions 1, 2 and 3 on one daemon; an identity switch re-issues the credential; a client whose clock is hours off falls back to version 2', { timeout: 60000 }, async () => {
  td = await startDaemon();
  const base = { host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint };
  for (const [maxVersion, ip] of [[1, '127.0.23.1'], [2, '127.0.23.2'], [3, '127.0.23.3']] as const) {
    const c = await connect({ ...base, localAddress: ip, maxVersion });
    try {
      assert.equal(c.version, maxVersion);
      assert.ok((await c.ping()) >= 0);
    } finally {
      await c.close();
    }
  }
  // The identity key switch (a rollover step) re-issues the credential under the new key.
  const before = td.daemon.credentials.current();
  const next = generateIdentity();
  td.daemon.setIdentity(next, undefined);
  const after = td.daemon.credentials.current();
  assert.ok(after.spki.equals(next.spki) && !after.key.publicRaw.equals(before.key.publicRaw));
  const c3 = await connect({ ...base, fingerprint: next.fingerprint, localAddress: '127.0.23.4' });
  try {
    assert.equal(c3.version, 3);
    assert.equal(c3.fingerprint, next.fingerprint);
  } finally {
    await c3.close();
  }
  // A clock 10 hours fast: the credential looks expired, the SDK connects with version 2.
  const fast = await connect({ ...base, fingerprint: next.fingerprint, localAddress: '127.0.23.5', now: () => Date.now() + 10 * 3600_000 });
  try {
    assert.equal(fast.version, 2);
    assert.ok((await fast.ping()) >= 0);
  } finally {
    await fast.close();
  }
  assert.deepEqual(
    td.violations.filter((v) => v.ip.startsWith('127.0.23.') && v.ip !== '127.0.23.5'),
    [],
    'no violation but the clock-mismatched attempt (which ends right after the ServerHello)',
  );
});
