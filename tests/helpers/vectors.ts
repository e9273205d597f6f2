import { readFileSync, writeFileSync } from 'node:fs';
import { ephemeralFromPrivate, x25519, type HandshakeRandomness } from '../../crypto/handshake-crypto.js';
import { generateIdentity, identityFromPem, signTranscript, verifyTranscript } from '../../crypto/identity.js';
import { ClientSession, pinFingerprint } from '../../protocol/client-session.js';
import { SERVER_HELLO_SIGNED_LEN } from '../../protocol/constants.js';
import { deriveSessionSecrets, directionKeys, nextDirectionKeys, signatureInput, transcriptHash, type DirectionKeys, type SessionSecrets } from '../../protocol/key-schedule.js';
import { joinBatch } from '../../protocol/batch.js';
import { encodeMessage, type Message } from '../../protocol/messages.js';
import { RecordSealer } from '../../protocol/record-layer.js';
import { ServerSession } from '../../protocol/server-session.js';

/**
 * Computes the protocol test vectors of docs/PROTOCOL.md from fixed inputs. The only input
 * that cannot be recomputed is the RSA-PSS signature (PSS is randomised); the vector file
 * records one valid signature, the test verifies it, and everything after it is fixed.
 */
export interface VectorInputs {
  identityPem: string;
  clientRandom: string;
  clientEphemeralPrivate: string;
  serverRandom: string;
  serverEphemeralPrivate: string;
  signature: string;
}

export type Vectors = Record<string, string>;

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const seq = (start: number) => Buffer.from(Array.from({ length: 32 }, (_, i) => start + i));

function randomness(random: string, eph: string): HandshakeRandomness {
  return { random32: () => Buffer.from(random, 'hex'), ephemeral: () => ephemeralFromPrivate(Buffer.from(eph, 'hex')) };
}

/**
 * Version 1: the client offers 1..1. Version 2: the client offers 1..2 and the server picks 2;
 * the outputs add a batch record (two pings in one DATA record).
 */
export function computeVectors(inp: VectorInputs, version: 1 | 2 = 1): Vectors {
  const identity = identityFromPem(inp.identityPem);
  const client = new ClientSession({
    acceptServerKey: pinFingerprint(identity.fingerprint),
    randomness: randomness(inp.clientRandom, inp.clientEphemeralPrivate),
    minVersion: 1,
    maxVersion: version,
  });
  client.start();
  const clientHello = Buffer.concat(client.takeOutput());
  const server = new ServerSession({ identity, randomness: randomness(inp.serverRandom, inp.serverEphemeralPrivate) });
  server.receive(clientHello);
  if (server.nextEvent().type !== 'hello') throw new Error('server refused the vector ClientHello');
  const serverHelloSigned = Buffer.concat(server.takeOutput()).subarray(0, SERVER_HELLO_SIGNED_LEN);
  const th = transcriptHash(clientHello, serverHelloSigned);
  const signature = Buffer.from(inp.signature, 'hex');
  if (!verifyTranscript(identity.spki, signatureInput(th), signature)) throw new Error('recorded signature does not verify');
  // Replace the server's fresh signature with the recorded one and recompute the rest.
  const serverHello = Buffer.concat([serverHelloSigned, signature]);
  const shared = x25519(ephemeralFromPrivate(Buffer.from(inp.serverEphemeralPrivate, 'hex')), clientShareOf(clientHello))!;
  const s = deriveSessionSecrets(Buffer.from(shared), clientHello, serverHelloSigned, signature);
  // Drive the client with the recorded ServerHello and a server Finished sealed under its keys.
  const serverFinishedRecord = sealFirst(s.serverToClient.secret, 0x01, s.serverFinished);
  client.receive(Buffer.concat([serverHello, serverFinishedRecord]));
  const est = client.nextEvent();
  if (est.type !== 'established') throw new Error(`vector client did not establish: ${JSON.stringify(est)}`);
  const clientFinishedRecord = Buffer.concat(client.takeOutput());
  // The exporter (section 4) is the same value on both sides; the server's own signature differs
  // from the recorded one, but version 1's exporter does not depend on the signature.
  if (!client.channelBinding?.equals(s.exporter)) throw new Error('client exporter differs from the key schedule');
  if (!server.channelBinding?.equals(s.exporter)) throw new Error('server exporter differs from the key schedule');
  const ping = { kind: 'request', id: 1, command: 'ping', payload: {}, stream: false } as const;
  client.sendMessage(ping);
  const clientPingRecord = Buffer.concat(client.takeOutput());
  const c2sUpdated = nextDirectionKeys(directionKeys(Buffer.from(s.clientToServer.secret)));
  const v2: Vectors = {};
  if (version === 2) {
    // Two requests issued in one turn leave in one record (seq 2).
    const ping2 = { kind: 'request', id: 2, command: 'ping', payload: {}, stream: false } as const;
    const ping3 = { kind: 'request', id: 3, command: 'ping', payload: { data: Buffer.from('ab', 'ascii') }, stream: false } as const;
    client.sendMessage(ping2);
    client.sendMessage(ping3);
    v2.batch_plaintext = hex(joinBatch([encodeMessage(ping2), encodeMessage(ping3)]));
    v2.client_batch_record = hex(Buffer.concat(client.takeOutput()));
  }
  return {
    identity_fingerprint: identity.fingerprint,
    identity_spki: hex(identity.spki),
    client_hello: hex(clientHello),
    server_hello_signed_part: hex(serverHelloSigned),
    transcript_hash: hex(th),
    signature_input: hex(signatureInput(th)),
    shared_secret: hex(shared),
    ...sessionVectors(s, { serverFinishedRecord, clientFinishedRecord, ping, clientPingRecord, c2sUpdated }),
    ...v2,
  };
}

/**
 * The outputs every version shares, in the order PROTOCOL.md 10 prints them: the key schedule's
 * values, the first records of each direction, the ping and the client's keys after a KEY_UPDATE.
 */
export function sessionVectors(
  s: SessionSecrets,
  r: { serverFinishedRecord: Uint8Array; clientFinishedRecord: Uint8Array; ping: Message; clientPingRecord: Uint8Array; c2sUpdated: DirectionKeys },
): Vectors {
  return {
    finished_hash: hex(s.finishedHash),
    c2s_traffic_secret: hex(s.clientToServer.secret),
    c2s_key: hex(s.clientToServer.key),
    c2s_iv: hex(s.clientToServer.iv),
    s2c_traffic_secret: hex(s.serverToClient.secret),
    s2c_key: hex(s.serverToClient.key),
    s2c_iv: hex(s.serverToClient.iv),
    client_finished: hex(s.clientFinished),
    server_finished: hex(s.serverFinished),
    exporter: hex(s.exporter),
    server_finished_record: hex(r.serverFinishedRecord),
    client_finished_record: hex(r.clientFinishedRecord),
    ping_request_cbor: hex(encodeMessage(r.ping)),
    client_ping_record: hex(r.clientPingRecord),
    c2s_traffic_secret_after_key_update: hex(r.c2sUpdated.secret),
    c2s_key_after_key_update: hex(r.c2sUpdated.key),
    c2s_iv_after_key_update: hex(r.c2sUpdated.iv),
  };
}

/** The client's X25519 share is the last 32 bytes of the ClientHello. */
function clientShareOf(clientHello: Buffer): Buffer {
  return clientHello.subarray(clientHello.length - 32);
}

function sealFirst(secret: Buffer, type: number, plaintext: Buffer): Buffer {
  const out: Buffer[] = [];
  new RecordSealer(directionKeys(Buffer.from(secret))).seal(type, plaintext, out);
  return Buffer.concat(out);
}

export const VECTOR_FILE = new URL('../../../tests/vectors/protocol-v1.json', import.meta.url);
export const VECTOR_FILE_V2 = new URL('../../../tests/vectors/protocol-v2.json', import.meta.url);

/**
 * `node dist/tests/helpers/vectors.js --write` creates the vector file (once; keep it stable);
 * with `--v2` the version 2 file, on the version 1 file's key and randoms with a signature over
 * the version 2 transcript.
 */
if (process.argv[1]?.endsWith('vectors.js') && process.argv.includes('--write') && process.argv.includes('--v2')) {
  const v1 = JSON.parse(readFileSync(VECTOR_FILE, 'utf8')).inputs as VectorInputs;
  const identity = identityFromPem(v1.identityPem);
  const c = new ClientSession({ acceptServerKey: () => true, randomness: randomness(v1.clientRandom, v1.clientEphemeralPrivate), minVersion: 1, maxVersion: 2 });
  c.start();
  const ch = Buffer.concat(c.takeOutput());
  const sv = new ServerSession({ identity, randomness: randomness(v1.serverRandom, v1.serverEphemeralPrivate) });
  sv.receive(ch);
  sv.nextEvent();
  const signed = Buffer.concat(sv.takeOutput()).subarray(0, SERVER_HELLO_SIGNED_LEN);
  const inputs = { ...v1, signature: hex(signTranscript(identity, signatureInput(transcriptHash(ch, signed)))) };
  writeFileSync(VECTOR_FILE_V2, `${JSON.stringify({ inputs, outputs: computeVectors(inputs, 2) }, null, 2)}\n`);
  process.stdout.write(`wrote ${VECTOR_FILE_V2.pathname}\n`);
} else if (process.argv[1]?.endsWith('vectors.js') && process.argv.includes('--write')) {
  let inputs: VectorInputs;
  try {
    inputs = JSON.parse(readFileSync(VECTOR_FILE, 'utf8')).inputs as VectorInputs;
  } catch {
    const identity = generateIdentity();
    const base = {
      identityPem: identity.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
      clientRandom: hex(seq(0x00)),
      clientEphemeralPrivate: hex(seq(0x20)),
      serverRandom: hex(seq(0x40)),
      serverEphemeralPrivate: hex(seq(0x60)),
    };
    const c = new ClientSession({ acceptServerKey: () => true, randomness: randomness(base.clientRandom, base.clientEphemeralPrivate), maxVersion: 1 });
    c.start();
    const ch = Buffer.concat(c.takeOutput());
    const sv = new ServerSession({ identity, randomness: randomness(base.serverRandom, base.serverEphemeralPrivate) });
    sv.receive(ch);
    sv.nextEvent();
    const signed = Buffer.concat(sv.takeOutput()).subarray(0, SERVER_HELLO_SIGNED_LEN);
    inputs = { ...base, signature: hex(signTranscript(identity, signatureInput(transcriptHash(ch, signed)))) };
  }
  writeFileSync(VECTOR_FILE, `${JSON.stringify({ inputs, outputs: computeVectors(inputs) }, null, 2)}\n`);
  process.stdout.write(`wrote ${VECTOR_FILE.pathname}\n`);
}
