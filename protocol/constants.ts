/**
 * Every number on the wire, named once, as docs/PROTOCOL.md names it.
 */
import { IDENTITY_SIGNATURE_LEN, IDENTITY_SPKI_LEN } from '../crypto/identity.js';

/** "CMSP": the first four bytes a client sends. */
export const MAGIC = Buffer.from([0x43, 0x4d, 0x53, 0x50]);
export const MAGIC_LEN = 4;

export const PROTOCOL_VERSION_1 = 1;
/** Version 2: a DATA record carries a batch of messages (docs/PROTOCOL.md section 6.3). */
export const PROTOCOL_VERSION_2 = 2;
/**
 * Version 3: version 2's records, the handshake signed by a delegated credential (an Ed25519 key
 * the identity key vouches for, section 3.5) and a shorter key schedule (section 4.1).
 */
export const PROTOCOL_VERSION_3 = 3;
/** All stay accepted: version 1 and 2 clients keep working against a version 3 server (section 8). */
export const SUPPORTED_VERSIONS: readonly number[] = [PROTOCOL_VERSION_1, PROTOCOL_VERSION_2, PROTOCOL_VERSION_3];

/** Handshake message: type u8, body length u16 BE, body. */
export const HS_HEADER_LEN = 3;
export const HS_CLIENT_HELLO = 0x01;
export const HS_SERVER_HELLO = 0x02;
export const HS_REJECT = 0x7f;

export const RANDOM_LEN = 32;
export const X25519_PUBLIC_LEN = 32;

/** min version u16, max version u16, client random, client X25519 share. */
export const CLIENT_HELLO_BODY_LEN = 2 + 2 + RANDOM_LEN + X25519_PUBLIC_LEN; // 68
export const CLIENT_HELLO_LEN = MAGIC_LEN + HS_HEADER_LEN + CLIENT_HELLO_BODY_LEN; // 75

export const SERVER_SPKI_LEN = IDENTITY_SPKI_LEN; // 294
export const SERVER_SIGNATURE_LEN = IDENTITY_SIGNATURE_LEN; // 256
/** version u16, server random, server X25519 share, identity SPKI, signature. */
export const SERVER_HELLO_BODY_LEN = 2 + RANDOM_LEN + X25519_PUBLIC_LEN + SERVER_SPKI_LEN + SERVER_SIGNATURE_LEN; // 616
export const SERVER_HELLO_LEN = HS_HEADER_LEN + SERVER_HELLO_BODY_LEN; // 619
/** The part of the ServerHello covered by the transcript hash that the signature signs. */
export const SERVER_HELLO_SIGNED_LEN = SERVER_HELLO_LEN - SERVER_SIGNATURE_LEN; // 363

/**
 * Version 3 (section 3.5): the delegated credential and its fields. A credential is
 * valid_from u64 || valid_until u64 (ms since the epoch) || version u16 || scheme u16 || public key.
 */
export const CREDENTIAL_PUBLIC_LEN = 32;
export const CREDENTIAL_LEN = 8 + 8 + 2 + 2 + CREDENTIAL_PUBLIC_LEN; // 52
/** Ed25519, numbered as TLS numbers its SignatureScheme (RFC 8446 4.2.3). */
export const CREDENTIAL_SCHEME_ED25519 = 0x0807;
export const CREDENTIAL_SIGNATURE_LEN = IDENTITY_SIGNATURE_LEN; // 256, RSA-PSS by the identity key
export const V3_SIGNATURE_LEN = 64; // Ed25519 by the credential key
/** version u16, server random, server X25519 share, identity SPKI, credential, its signature, signature. */
export const SERVER_HELLO_V3_BODY_LEN =
  2 + RANDOM_LEN + X25519_PUBLIC_LEN + SERVER_SPKI_LEN + CREDENTIAL_LEN + CREDENTIAL_SIGNATURE_LEN + V3_SIGNATURE_LEN; // 732
export const SERVER_HELLO_V3_LEN = HS_HEADER_LEN + SERVER_HELLO_V3_BODY_LEN; // 735
export const SERVER_HELLO_V3_SIGNED_LEN = SERVER_HELLO_V3_LEN - V3_SIGNATURE_LEN; // 671
/**
 * A client refuses a credential whose window (valid_until - valid_from) is longer than this:
 * 6 hours, far under RFC 9345's 7 days (section 3.5 says why).
 */
export const CREDENTIAL_MAX_VALIDITY_MS = 6 * 3600_000;
/** Clock skew a client allows at both ends of the window: 5 minutes. */
export const CREDENTIAL_CLOCK_SKEW_MS = 5 * 60_000;
/** What this server issues: valid from 1 hour before issue to 4 hours after, renewed when under 3 hours remain. */
export const CREDENTIAL_BACKDATE_MS = 3600_000;
export const CREDENTIAL_LIFETIME_MS = 4 * 3600_000;
export const CREDENTIAL_RENEW_BEFORE_MS = 3 * 3600_000;

/** reject code u16. */
export const REJECT_BODY_LEN = 2;
export const REJECT_LEN = HS_HEADER_LEN + REJECT_BODY_LEN;
export const REJECT_VERSION = 1;
export const REJECT_HANDSHAKE_FAILED = 2;
export const REJECT_BUSY = 3;

/** Domain separation for the identity key's signature. */
export const SIGNATURE_CONTEXT = Buffer.from('CMSP v1 server signature\0', 'ascii');
/** Version 3: the credential key's signature over the transcript, and the identity key's over a credential. */
export const SIGNATURE_CONTEXT_V3 = Buffer.from('CMSP v3 server signature\0', 'ascii');
export const CREDENTIAL_CONTEXT = Buffer.from('CMSP v3 delegated credential\0', 'ascii');

/** Record: type u8, length u32 BE of the sealed body (ciphertext + tag), sealed body. */
export const RECORD_HEADER_LEN = 5;
export const RECORD_FINISHED = 0x01;
export const RECORD_DATA = 0x02;
export const RECORD_KEY_UPDATE = 0x03;
export const RECORD_CLOSE = 0x04;
export const TAG_LEN = 16;
export const MAX_RECORD_PLAINTEXT = 65536;
export const MAX_RECORD_SEALED = MAX_RECORD_PLAINTEXT + TAG_LEN;
export const FINISHED_LEN = 32;
export const CLOSE_BODY_LEN = 2;

/**
 * At most this many records are sealed under one key; the record with sequence number
 * REKEY_AFTER_RECORDS - 1 must be a KEY_UPDATE. 2^20 records of at most 64 KiB keep each key
 * below 2^32 AES blocks, far inside AES-GCM's confidentiality bound (about 2^34 blocks for a
 * 2^-60 advantage, as RFC 8446 section 5.5 computes it).
 */
export const REKEY_AFTER_RECORDS = 2 ** 20;

/** Close codes carried in a CLOSE record. */
export const CLOSE_NORMAL = 0;
export const CLOSE_SHUTDOWN = 1;
export const CLOSE_IDLE = 2;
export const CLOSE_PROTOCOL_ERROR = 3;
export const CLOSE_POLICY = 4;

/** Message layer (CBOR arrays inside DATA records). */
export const MSG_REQUEST = 0;
export const MSG_RESPONSE = 1;
export const MSG_ERROR = 2;
export const MSG_CHUNK = 3;
export const MSG_END = 4;
export const MSG_CREDIT = 5;
export const MSG_CANCEL = 6;
export const MSG_NOTICE = 7;

export const MAX_REQUEST_ID = 0xffffffff;
export const MAX_COMMAND_LEN = 64;
export const MAX_CBOR_DEPTH = 16;
/** Bytes of a CHUNK message's data; leaves room for the CBOR envelope inside one record. */
export const MAX_CHUNK_LEN = 65024;
/** Initial per-stream flow-control window, in chunk data bytes, for each direction. */
export const INITIAL_STREAM_WINDOW = 262144;
export const MAX_STREAM_WINDOW = 16 * 1024 * 1024;
export const MAX_INFLIGHT_REQUESTS = 64;

/** Version 2: each message in a DATA record is preceded by its length as u16 BE. */
export const BATCH_LENGTH_LEN = 2;
/** Version 2: at most this many messages in one DATA record (a receiver refuses more). */
export const MAX_MESSAGES_PER_RECORD = 64;
/** Version 2: the largest message (one alone in a record, after its length prefix). */
export const MAX_MESSAGE_LEN_V2 = MAX_RECORD_PLAINTEXT - BATCH_LENGTH_LEN;
