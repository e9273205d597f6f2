import { randomBytes } from 'node:crypto';
import { ephemeralFromPrivate, systemRandomness, x25519, type HandshakeRandomness } from '../../crypto/handshake-crypto.js';

/**
 * Randomness for a ClientSession whose ephemeral key the test needs again after the handshake
 * (to derive the session keys itself). The session wipes its ephemeral key right after the
 * agreement (crypto/handshake-keys.ts wipeEphemeral), so the key is kept here as its private
 * bytes and rebuilt for the test's own agreement.
 */
export function capturingRandomness(): { randomness: HandshakeRandomness; shared(peerRaw: Uint8Array): Buffer | undefined } {
  const priv = randomBytes(32);
  return {
    randomness: { random32: systemRandomness.random32, ephemeral: () => ephemeralFromPrivate(priv) },
    shared: (peerRaw) => x25519(ephemeralFromPrivate(priv), peerRaw),
  };
}
