import { readFileSync, writeFileSync } from 'node:fs';
import { credentialKeyFromPrivate, ephemeralFromPrivate, x25519, type HandshakeRandomness } from '../../crypto/handshake-crypto.js';
import { identityFromPem, signTranscript, verifyTranscript } from '../../crypto/identity.js';
import { ClientSession, pinFingerprint } from '../../protocol/client-session.js';
import { PROTOCOL_VERSION_3, CREDENTIAL_SCHEME_ED25519, SERVER_HELLO_V3_SIGNED_LEN } from '../../protocol/constants.js';
import { credentialSignatureInput, encodeCredential, type ServerCredential } from '../../protocol/credential.js';
import { deriveSessionSecretsV3, directionKeysV3, nextDirectionKeys, signatureInputV3, transcriptHash } from '../../protocol/key-schedule.js';
import { ServerSession } from '../../protocol/server-session.js';
import { derivePeerAuthKey } from '../../crypto/cluster-seal.js';
import { peerProof } from '../../cluster/peer-auth.js';
import { sessionVectors, VECTOR_FILE, type VectorInputs, type Vectors } from './vectors.js';

/**
 * Version 3 test vectors (docs/PROTOCOL.md 10.2): the identity key, randoms and ephemeral keys
 * of version 1's vectors, plus a fixed Ed25519 credential key and window; the credential's
 * RSA-PSS signature is randomised and recorded as an input. Ed25519 is deterministic, so the
 * handshake signature and everything after it is an output.
 */
export interface VectorInputsV3 extends Omit<VectorInputs, 'signature'> {
  credentialPrivate: string;
  validFrom: string;
  validUntil: string;
  /** The client's clock during the handshake (ms since the epoch, decimal). */
  clientTime: string;
  credentialSignature: string;
  /** Section 6.6: a master key (32 bytes, hex) and two node ids for the membership proof vectors. */
  masterKey: string;
  peerFrom: string;
  peerTo: string;
}

export const VECTOR_FILE_V3 = new URL('../../../tests/vectors/protocol-v3.json', import.meta.url);

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

function randomness(random: string, eph: string): HandshakeRandomness {
  return { random32: () => Buffer.from(random, 'hex'), ephemeral: () => ephemeralFromPrivate(Buffer.from(eph, 'hex')) };
}

/** The credential of the vector inputs, with the recorded identity signature. */
export function vectorCredential(inp: VectorInputsV3): ServerCredential {
  const identity = identityFromPem(inp.identityPem);
  const key = credentialKeyFromPrivate(Buffer.from(inp.credentialPrivate, 'hex'));
  const validFrom = Number(inp.validFrom);
  const validUntil = Number(inp.validUntil);
  const bytes = encodeCredential({ validFrom, validUntil, version: PROTOCOL_VERSION_3, scheme: CREDENTIAL_SCHEME_ED25519, publicRaw: key.publicRaw });
  return { bytes, signature: Buffer.from(inp.credentialSignature, 'hex'), key, spki: identity.spki, validFrom, validUntil };
}

export function computeVectorsV3(inp: VectorInputsV3): Vectors {
  const identity = identityFromPem(inp.identityPem);
  const credential = vectorCredential(inp);
  const credInput = credentialSignatureInput(identity.spki, credential.bytes);
  if (!verifyTranscript(identity.spki, credInput, credential.signature)) throw new Error('recorded credential signature does not verify');
  const client = new ClientSession({
    acceptServerKey: pinFingerprint(identity.fingerprint),
    randomness: randomness(inp.clientRandom, inp.clientEphemeralPrivate),
    minVersion: 1,
    maxVersion: 3,
    now: () => Number(inp.clientTime),
  });
  client.start();
  const clientHello = Buffer.concat(client.takeOutput());
  const server = new ServerSession({ identity, credential, randomness: randomness(inp.serverRandom, inp.serverEphemeralPrivate) });
  server.receive(clientHello);
  if (server.nextEvent().type !== 'hello') throw new Error('server refused the vector ClientHello');
  const out = Buffer.concat(server.takeOutput());
  const signed = out.subarray(0, SERVER_HELLO_V3_SIGNED_LEN);
  const signature = out.subarray(SERVER_HELLO_V3_SIGNED_LEN, SERVER_HELLO_V3_SIGNED_LEN + 64);
  const serverFinishedRecord = out.subarray(SERVER_HELLO_V3_SIGNED_LEN + 64);
  const th = transcriptHash(clientHello, signed);
  const shared = ephemeralShared(inp, clientHello);
  const s = deriveSessionSecretsV3(Buffer.from(shared), clientHello, signed, signature);
  client.receive(out);
  const est = client.nextEvent();
  if (est.type !== 'established' || est.version !== 3) throw new Error(`vector client did not establish version 3: ${JSON.stringify(est)}`);
  const clientFinishedRecord = Buffer.concat(client.takeOutput());
  if (!client.channelBinding?.equals(s.exporter)) throw new Error('client exporter differs from the key schedule');
  if (!server.channelBinding?.equals(s.exporter)) throw new Error('server exporter differs from the key schedule');
  const peerKey = derivePeerAuthKey(Buffer.from(inp.masterKey, 'hex'));
  const ping = { kind: 'request', id: 1, command: 'ping', payload: {}, stream: false } as const;
  client.sendMessage(ping);
  const clientPingRecord = Buffer.concat(client.takeOutput());
  const c2sUpdated = nextDirectionKeys(directionKeysV3(Buffer.from(s.clientToServer.secret)));
  return {
    identity_fingerprint: identity.fingerprint,
    credential: hex(credential.bytes),
    credential_public: hex(credential.key.publicRaw),
    credential_signature_input: hex(credInput),
    client_hello: hex(clientHello),
    server_hello_signed_part: hex(signed),
    transcript_hash: hex(th),
    signature_input: hex(signatureInputV3(th)),
    signature: hex(signature),
    shared_secret: hex(shared),
    ...sessionVectors(s, { serverFinishedRecord, clientFinishedRecord, ping, clientPingRecord, c2sUpdated }),
    // Section 6.6 on this session: peer.auth's proof from peerFrom and the answer from peerTo.
    peer_key: hex(peerKey),
    peer_proof_client: hex(peerProof(peerKey, 'client', inp.peerFrom, inp.peerTo, s.exporter)),
    peer_proof_server: hex(peerProof(peerKey, 'server', inp.peerTo, inp.peerFrom, s.exporter)),
  };
}

/** The X25519 secret of the vector keys, computed on the server's side. */
function ephemeralShared(inp: VectorInputsV3, clientHello: Buffer): Buffer {
  const own = ephemeralFromPrivate(Buffer.from(inp.serverEphemeralPrivate, 'hex'));
  return x25519(own, clientHello.subarray(clientHello.length - 32))!;
}

/** `node dist/tests/helpers/vectors-v3.js --write` creates the version 3 vector file (once; keep it stable). */
if (process.argv[1]?.endsWith('vectors-v3.js') && process.argv.includes('--write')) {
  const v1 = JSON.parse(readFileSync(VECTOR_FILE, 'utf8')).inputs as VectorInputs;
  const { signature: _unused, ...base } = v1;
  const identity = identityFromPem(v1.identityPem);
  const partial = {
    ...base,
    credentialPrivate: '808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f',
    validFrom: '1764486000000', // 2025-11-30T07:00:00Z
    validUntil: '1764500400000', // 4 hours later
    clientTime: '1764489600000', // 08:00:00Z
    masterKey: 'a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf',
    peerFrom: 'node-a',
    peerTo: 'node-b',
  };
  const key = credentialKeyFromPrivate(Buffer.from(partial.credentialPrivate, 'hex'));
  const bytes = encodeCredential({ validFrom: Number(partial.validFrom), validUntil: Number(partial.validUntil), version: 3, scheme: CREDENTIAL_SCHEME_ED25519, publicRaw: key.publicRaw });
  const inputs: VectorInputsV3 = { ...partial, credentialSignature: hex(signTranscript(identity, credentialSignatureInput(identity.spki, bytes))) };
  writeFileSync(VECTOR_FILE_V3, `${JSON.stringify({ inputs, outputs: computeVectorsV3(inputs) }, null, 2)}\n`);
  process.stdout.write(`wrote ${VECTOR_FILE_V3.pathname}\n`);
}
