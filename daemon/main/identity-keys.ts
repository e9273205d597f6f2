/**
 * The daemon's identity keys during a rollover (docs/OPERATIONS.md "Rolling the identity key
 * over"): which key signs handshakes, change-log heads and archive origins now, and the
 * `identity.keys` NOTICE every session gets at its start and every established session gets when
 * the phase changes (docs/PROTOCOL.md 6.4). The files and phases are crypto/identity-keyring.ts;
 * this holder loads them and tells the parts of the daemon that hold the key.
 */
import type { IdentityKey } from '../../crypto/identity.js';
import { loadIdentityKeySet, type IdentityKeySet, type RotationPhase } from '../../crypto/identity-keyring.js';
import { encodeIdentityNotice } from '../../protocol/identity-notice.js';

/**
 * How long after `retire` a client's TCP close right after the ServerHello still counts as no
 * violation (PROTOCOL.md 11): 30 days, long enough for members who open the app once a month to
 * have met the new key (those whose client drops the connection on a pin mismatch instead of
 * closing as section 3.2 says) without a ban for their whole NAT.
 */
export const HELLO_DROP_GRACE_AFTER_RETIRE_MS = 30 * 24 * 3600 * 1000;

/**
 * True while a close right after the ServerHello is tolerated: the key set is in the switched
 * phase (a previous key present), or its newest retirement is less than `graceMs` before `now`
 * (ms since the epoch).
 */
export function helloDropTolerated(set: IdentityKeySet, now: number, graceMs = HELLO_DROP_GRACE_AFTER_RETIRE_MS): boolean {
  if (set.phase === 'switched') return true;
  let newest = -Infinity;
  for (const r of set.rotations) if (r.retiredAt) newest = Math.max(newest, Date.parse(r.retiredAt));
  return now - newest < graceMs;
}

export interface IdentityHolder {
  /** The key that signs from now on. */
  readonly current: IdentityKey;
  readonly phase: RotationPhase;
  /** During a rollover: its phase and the other key's fingerprint (next, or previous); else undefined. */
  readonly rollover: { phase: 'announce' | 'switched'; otherKey: string } | undefined;
  /** See helloDropTolerated: at `now` (ms since the epoch). */
  helloDropTolerated(now: number): boolean;
  /** The NOTICE payload, or undefined when this folder never rotated its identity key. */
  readonly notice: Record<string, unknown> | undefined;
  /** Re-reads the key files (after a rotation step) and tells every subscriber. */
  reload(): IdentityKeySet;
  /** `fn` runs at each reload with the new set. */
  subscribe(fn: (set: IdentityKeySet, notice: Record<string, unknown> | undefined) => void): void;
}

/**
 * The notice for a key set: announce names the next key, switched the previous one; after a
 * rotation the statements stay in the notice, so a client that missed the rollover learns why
 * the key changed (it is still refused: PROTOCOL.md 3.2).
 */
export function noticeFor(set: IdentityKeySet): Record<string, unknown> | undefined {
  // Never rotated: no notice. After an abort (no statement left) the notice still tells clients
  // that pinned the aborted next key to drop it.
  if (!set.rotated && set.phase === 'single') return undefined;
  return encodeIdentityNotice({
    current: set.current.spki,
    ...(set.next ? { next: set.next.spki } : {}),
    ...(set.previous ? { previous: set.previous.spki } : {}),
    rotations: set.rotations,
  });
}

/** Loads `keys/identity*.pem` (throws IdentityKeyError / IdentityRotationError like loadIdentity). */
export function openIdentityHolder(identityKeyPath: string): IdentityHolder {
  let set = loadIdentityKeySet(identityKeyPath);
  let notice = noticeFor(set);
  const subscribers: Array<(s: IdentityKeySet, n: Record<string, unknown> | undefined) => void> = [];
  return {
    get current() {
      return set.current;
    },
    get phase() {
      return set.phase;
    },
    get rollover() {
      if (set.next) return { phase: 'announce' as const, otherKey: set.next.fingerprint };
      if (set.previous) return { phase: 'switched' as const, otherKey: set.previous.fingerprint };
      return undefined;
    },
    get notice() {
      return notice;
    },
    helloDropTolerated(now) {
      return helloDropTolerated(set, now);
    },
    reload() {
      set = loadIdentityKeySet(identityKeyPath);
      notice = noticeFor(set);
      for (const fn of subscribers) fn(set, notice);
      return set;
    },
    subscribe(fn) {
      subscribers.push(fn);
    },
  };
}
