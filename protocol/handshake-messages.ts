import {
  CLIENT_HELLO_BODY_LEN,
  CLIENT_HELLO_LEN,
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
