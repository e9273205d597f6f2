import {
  CLIENT_HELLO_BODY_LEN,
  CLIENT_HELLO_LEN,
  CREDENTIAL_LEN,
  CREDENTIAL_SIGNATURE_LEN,
  HS_CLIENT_HELLO,
  HS_HEADER_LEN,
  HS_REJECT,
  HS_SERVER_HELLO,
  MAGIC,
  MAGIC_LEN,
  RANDOM_LEN,
  REJECT_BODY_LEN,
  REJECT_LEN,
  SERVER_HELLO_BODY_LEN,
  SERVER_HELLO_LEN,
  SERVER_HELLO_SIGNED_LEN,
  SERVER_SIGNATURE_LEN,
  SERVER_SPKI_LEN,
  SERVER_HELLO_V3_BODY_LEN,
  SERVER_HELLO_V3_LEN,
  SERVER_HELLO_V3_SIGNED_LEN,
  PROTOCOL_VERSION_3,
  V3_SIGNATURE_LEN,
  X25519_PUBLIC_LEN,
} from './constants.js';
import { ProtocolError } from './errors.js';

/**
 * Byte layouts of the plaintext handshake messages. Every message has a fixed length, and a
 * parser rejects any other length before looking at the contents (as wireguard does).
 */
export interface ClientHello {
  readonly minVersion: number;
  readonly maxVersion: number;
  readonly random: Buffer;
  readonly share: Buffer;
}

export interface ServerHello {
  readonly version: number;
  readonly random: Buffer;
  readonly share: Buffer;
  readonly spki: Buffer;
  readonly signature: Buffer;
}

export function encodeClientHello(h: ClientHello): Buffer {
  const b = Buffer.alloc(CLIENT_HELLO_LEN);
  MAGIC.copy(b, 0);
  let o = MAGIC_LEN;
  b[o++] = HS_CLIENT_HELLO;
  b.writeUInt16BE(CLIENT_HELLO_BODY_LEN, o);
  o += 2;
  b.writeUInt16BE(h.minVersion, o);
  b.writeUInt16BE(h.maxVersion, o + 2);
  o += 4;
  h.random.copy(b, o);
  h.share.copy(b, o + RANDOM_LEN);
  return b;
}

/** `bytes` must be exactly CLIENT_HELLO_LEN bytes starting with the magic. */
export function parseClientHello(bytes: Uint8Array): ClientHello {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length !== CLIENT_HELLO_LEN || !b.subarray(0, MAGIC_LEN).equals(MAGIC)) {
    throw new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'ClientHello has the wrong length or magic');
  }
  if (b[MAGIC_LEN] !== HS_CLIENT_HELLO || b.readUInt16BE(MAGIC_LEN + 1) !== CLIENT_HELLO_BODY_LEN) {
    throw new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'expected a ClientHello');
  }
  const o = MAGIC_LEN + HS_HEADER_LEN;
  const minVersion = b.readUInt16BE(o);
  const maxVersion = b.readUInt16BE(o + 2);
  if (minVersion === 0 || minVersion > maxVersion) {
    // Answered like a range without a common version: Reject code 1 (PROTOCOL.md 3.3, 8).
    throw new ProtocolError('VERSION_UNSUPPORTED', 'ClientHello has an empty version range or min_version 0');
  }
  return {
    minVersion,
    maxVersion,
    random: Buffer.from(b.subarray(o + 4, o + 4 + RANDOM_LEN)),
    share: Buffer.from(b.subarray(o + 4 + RANDOM_LEN, o + 4 + RANDOM_LEN + X25519_PUBLIC_LEN)),
  };
}

/** The signed part: everything of the ServerHello but the signature. */
export function encodeServerHelloSigned(h: Omit<ServerHello, 'signature'>): Buffer {
  const b = Buffer.alloc(SERVER_HELLO_SIGNED_LEN);
  let o = 0;
  b[o++] = HS_SERVER_HELLO;
  b.writeUInt16BE(SERVER_HELLO_BODY_LEN, o);
  o += 2;
  b.writeUInt16BE(h.version, o);
  o += 2;
  h.random.copy(b, o);
  o += RANDOM_LEN;
  h.share.copy(b, o);
  o += X25519_PUBLIC_LEN;
  if (h.spki.length !== SERVER_SPKI_LEN) throw new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'identity key has the wrong size');
  h.spki.copy(b, o);
  return b;
}

export function parseServerHello(bytes: Uint8Array): ServerHello & { signed: Buffer } {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length !== SERVER_HELLO_LEN || b[0] !== HS_SERVER_HELLO || b.readUInt16BE(1) !== SERVER_HELLO_BODY_LEN) {
    throw new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'expected a ServerHello');
  }
  let o = HS_HEADER_LEN;
  const version = b.readUInt16BE(o);
  o += 2;
  const random = Buffer.from(b.subarray(o, o + RANDOM_LEN));
  o += RANDOM_LEN;
  const share = Buffer.from(b.subarray(o, o + X25519_PUBLIC_LEN));
  o += X25519_PUBLIC_LEN;
  const spki = Buffer.from(b.subarray(o, o + SERVER_SPKI_LEN));
  o += SERVER_SPKI_LEN;
  const signature = Buffer.from(b.subarray(o, o + SERVER_SIGNATURE_LEN));
  return { version, random, share, spki, signature, signed: Buffer.from(b.subarray(0, SERVER_HELLO_SIGNED_LEN)) };
}

/** Version 3's ServerHello (section 3.5): version 1's fields, then the credential and its identity signature. */
export interface ServerHelloV3 extends ServerHello {
  readonly credential: Buffer;
  readonly credentialSignature: Buffer;
}

/**
 * The length of the ServerHello that starts `head` (at least HS_HEADER_LEN + 2 bytes), from its
 * body length and version: SERVER_HELLO_LEN for versions 1 and 2, SERVER_HELLO_V3_LEN for 3.
 * Any other pairing is refused, so a version cannot be read under another's layout.
 */
export function serverHelloLength(head: Uint8Array): number {
  const b = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
  if (b[0] !== HS_SERVER_HELLO) throw new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'expected a ServerHello');
  const body = b.readUInt16BE(1);
  const version = b.readUInt16BE(HS_HEADER_LEN);
  if (version === PROTOCOL_VERSION_3 && body === SERVER_HELLO_V3_BODY_LEN) return SERVER_HELLO_V3_LEN;
  if (version !== PROTOCOL_VERSION_3 && body === SERVER_HELLO_BODY_LEN) return SERVER_HELLO_LEN;
  throw new ProtocolError('BAD_HANDSHAKE_MESSAGE', `ServerHello of body length ${body} for version ${version}`);
}

/** The signed part of a version 3 ServerHello: everything but the Ed25519 signature (671 bytes). */
export function encodeServerHelloV3Signed(h: Omit<ServerHelloV3, 'signature'>): Buffer {
  if (h.spki.length !== SERVER_SPKI_LEN) throw new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'identity key has the wrong size');
  if (h.credential.length !== CREDENTIAL_LEN || h.credentialSignature.length !== CREDENTIAL_SIGNATURE_LEN) {
    throw new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'credential has the wrong size');
  }
  const b = Buffer.alloc(SERVER_HELLO_V3_SIGNED_LEN);
  let o = 0;
  b[o++] = HS_SERVER_HELLO;
  b.writeUInt16BE(SERVER_HELLO_V3_BODY_LEN, o);
  o += 2;
  b.writeUInt16BE(h.version, o);
  o += 2;
  o += h.random.copy(b, o);
  o += h.share.copy(b, o);
  o += h.spki.copy(b, o);
  o += h.credential.copy(b, o);
  h.credentialSignature.copy(b, o);
  return b;
}

/** `bytes` must be exactly SERVER_HELLO_V3_LEN bytes (serverHelloLength said so). */
export function parseServerHelloV3(bytes: Uint8Array): ServerHelloV3 & { signed: Buffer } {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length !== SERVER_HELLO_V3_LEN || serverHelloLength(b) !== SERVER_HELLO_V3_LEN) {
    throw new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'expected a version 3 ServerHello');
  }
  let o = HS_HEADER_LEN + 2;
  const take = (n: number) => Buffer.from(b.subarray(o, (o += n)));
  const random = take(RANDOM_LEN);
  const share = take(X25519_PUBLIC_LEN);
  const spki = take(SERVER_SPKI_LEN);
  const credential = take(CREDENTIAL_LEN);
  const credentialSignature = take(CREDENTIAL_SIGNATURE_LEN);
  const signature = take(V3_SIGNATURE_LEN);
  return { version: PROTOCOL_VERSION_3, random, share, spki, credential, credentialSignature, signature, signed: Buffer.from(b.subarray(0, SERVER_HELLO_V3_SIGNED_LEN)) };
}

export function encodeReject(code: number): Buffer {
  const b = Buffer.alloc(REJECT_LEN);
  b[0] = HS_REJECT;
  b.writeUInt16BE(REJECT_BODY_LEN, 1);
  b.writeUInt16BE(code, 3);
  return b;
}

export function parseReject(bytes: Uint8Array): number {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length !== REJECT_LEN || b[0] !== HS_REJECT || b.readUInt16BE(1) !== REJECT_BODY_LEN) {
    throw new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'malformed Reject');
  }
  return b.readUInt16BE(3);
}
