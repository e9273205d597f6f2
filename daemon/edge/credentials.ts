import { generateCredentialKey } from '../../crypto/handshake-crypto.js';
import type { IdentityKey } from '../../crypto/identity.js';
import { CREDENTIAL_RENEW_BEFORE_MS } from '../../protocol/constants.js';
import { issueCredential, type ServerCredential } from '../../protocol/credential.js';

/**
 * The daemon's delegated credential for protocol version 3 (docs/PROTOCOL.md 3.5): a fresh
 * Ed25519 key, made in this process and never written anywhere, vouched for by the identity
 * key (one RSA-PSS signature) for CREDENTIAL_LIFETIME_MS (4 h, valid from 1 h before issue).
 * Renewed with a new key on the first handshake once less than CREDENTIAL_RENEW_BEFORE_MS (3 h)
 * of the window remain, so every handshake is signed by a credential with at least 3 hours
 * left; no timer. An identity key rollover step re-issues it under the new key at once
 * (`reissue`). In a cluster every member runs its own issuer under the shared identity key:
 * no credential key leaves the process that made it.
 */
export class CredentialIssuer {
  private currentValue: ServerCredential;
  /** How many credentials this process has issued (for the log and tests). */
  issued = 0;

  constructor(
    private identity: IdentityKey,
    private readonly clock: () => number = Date.now,
    private readonly onIssue?: (c: ServerCredential) => void,
  ) {
    this.currentValue = this.issue();
  }

  /**
   * The credential for a handshake starting now, renewed first when it is due: close to its end,
   * or starting in the future (the server's clock stepped back past the backdating; clients
   * would refuse it as not yet valid).
   */
  current(): ServerCredential {
    const now = this.clock();
    if (this.currentValue.validUntil - now < CREDENTIAL_RENEW_BEFORE_MS || this.currentValue.validFrom > now) this.currentValue = this.issue();
    return this.currentValue;
  }

  /** A new credential (and key) under `identity`: the identity key rollover's switch. */
  reissue(identity: IdentityKey): ServerCredential {
    this.identity = identity;
    this.currentValue = this.issue();
    return this.currentValue;
  }

  private issue(): ServerCredential {
    const c = issueCredential(this.identity, generateCredentialKey(), this.clock());
    this.issued++;
    this.onIssue?.(c);
    return c;
  }
}
