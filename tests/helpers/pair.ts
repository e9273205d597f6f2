import { generateCredentialKey } from '../../crypto/handshake-crypto.js';
import { generateIdentity, type IdentityKey } from '../../crypto/identity.js';
import { issueCredential, type ServerCredential } from '../../protocol/credential.js';
import { ClientSession, pinFingerprint, type ClientEvent } from '../../protocol/client-session.js';
import { ServerSession, type ServerEvent } from '../../protocol/server-session.js';

let cached: IdentityKey | undefined;
/** RSA-2048 generation takes ~100 ms; tests share one key. */
export function testIdentity(): IdentityKey {
  cached ??= generateIdentity();
  return cached;
}

let cachedCredential: ServerCredential | undefined;
/** A delegated credential under testIdentity(), issued now (valid for hours: longer than any test). */
export function testCredential(): ServerCredential {
  cachedCredential ??= issueCredential(testIdentity(), generateCredentialKey(), Date.now());
  return cachedCredential;
}

export function drain<E extends { type: string }>(s: { nextEvent(): E }): E[] {
  const out: E[] = [];
  for (let i = 0; i < 10000; i++) {
    const e = s.nextEvent();
    out.push(e);
    if (e.type === 'need-data' || e.type === 'error' || e.type === 'closed') break;
  }
  return out;
}

export function concat(bufs: Buffer[]): Buffer {
  return Buffer.concat(bufs);
}

/** Runs a full in-memory handshake; returns both established sessions. */
export function establishedPair(opts: { rekeyAfterRecords?: number } = {}): { client: ClientSession; server: ServerSession; clientEvents: ClientEvent[]; serverEvents: ServerEvent[] } {
  const identity = testIdentity();
  const server = new ServerSession({ identity, ...opts });
  const client = new ClientSession({ acceptServerKey: pinFingerprint(identity.fingerprint), ...opts });
  client.start();
  server.receive(concat(client.takeOutput()));
  const serverEvents = drain(server);
  client.receive(concat(server.takeOutput()));
  const clientEvents = drain(client);
  server.receive(concat(client.takeOutput()));
  serverEvents.push(...drain(server));
  return { client, server, clientEvents, serverEvents };
}
