/**
 * Membership proof on the peer channel (issue 14, "Security of the new paths"; docs/SECURITY.md
 * "Server-to-server traffic").
 *
 * Every member holds the same identity key, so the identity handshake (PROTOCOL.md 3, 4) shows
 * only that the other end holds that key. Membership is proved on top of it, both ways, with an
 * HMAC-SHA256 (RFC 2104) under the peer key (HKDF of the shared master key with its own label,
 * crypto/cluster-seal.ts derivePeerAuthKey) over:
 *
 *     "commusic peer auth v1" 0x00 role 0x00 from 0x00 to 0x00 exporter
 *
 * `role` is "client" for the connecting member and "server" for the answering one (a proof is
 * never valid in the other direction), `from` and `to` are node ids, and `exporter` is the
 * session's exporter value (PROTOCOL.md 4): secret and unique per session, so a proof is bound to
 * the session it was made on (channel binding, as RFC 9266) and cannot be replayed on another or
 * relayed by a third party that terminates one session and opens another. The exporter has
 * fresh randomness of both sides in it, so it also serves as the challenge.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

/** Bytes of a proof (HMAC-SHA256). */
export const PEER_PROOF_LEN = 32;
const CONTEXT = 'commusic peer auth v1';

export type PeerRole = 'client' | 'server';

/** The proof `from` gives `to` on the session with this exporter value. */
export function peerProof(peerKey: Uint8Array, role: PeerRole, from: string, to: string, exporter: Uint8Array): Buffer {
  const h = createHmac('sha256', peerKey);
  h.update(`${CONTEXT}\u0000${role}\u0000${from}\u0000${to}\u0000`, 'utf8');
  h.update(exporter);
  return h.digest();
}

/** Whether `proof` is `from`'s proof for this session (constant-time; any length or type mismatch is false). */
export function checkPeerProof(peerKey: Uint8Array, role: PeerRole, from: string, to: string, exporter: Uint8Array | undefined, proof: unknown): boolean {
  if (!exporter || exporter.length !== 32 || !(proof instanceof Uint8Array) || proof.length !== PEER_PROOF_LEN) return false;
  const want = peerProof(peerKey, role, from, to, exporter);
  return timingSafeEqual(want, proof);
}
