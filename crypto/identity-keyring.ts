/**
 * The identity key files of a data folder and the phases of a rollover (docs/OPERATIONS.md
 * "Rolling the identity key over"; in the spirit of OpenSSH's hostkeys-00@openssh.com):
 *
 *   phase      files in keys/                                   the handshake is signed by
 *   single     identity.pem                                     identity.pem
 *   announce   identity.pem, identity-next.pem                  identity.pem (the current key)
 *   switched   identity.pem (was next), identity-previous.pem   identity.pem (the new key)
 *
 * `start` (single -> announce) creates the next key (mode 0600, like the current one) and appends
 * the rotation statement, signed by both keys, to identity-rotations.json; `switch` (announce ->
 * switched) makes the next key the current one and keeps the old one as previous; `retire`
 * (switched -> single) deletes the previous private key; its public key stays in
 * identity-rotations.json, so change-log heads, anchors and archive origins it signed still verify.
 * `abort` (announce -> single) drops the next key before the switch.
 *
 * Each private key file has a public twin (`.pub`, PEM SPKI): verifiers read only public files.
 * Every step is crash-safe: a crash leaves the old or the new phase (a switch interrupted after
 * linking the previous key but before the rename is repaired by loadIdentityKeySet).
 */
import { existsSync, linkSync, renameSync, unlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fsyncDir } from './atomic-file.js';
import {
  ensurePublicKeyFile,
  fingerprintOf,
  generateIdentity,
  identityPublicPath,
  IdentityKeyError,
  loadIdentity,
  loadPublicIdentity,
  saveIdentity,
  verifyTranscript,
  type IdentityKey,
} from './identity.js';
import { signRotation, verifyRotation } from './identity-rotation.js';
import { IdentityRotationError, readRotationLog, writeRotationLog, type RotationRecord } from './rotation-log.js';

export { IdentityRotationError, MAX_ROTATION_LOG, readRotationLog, type RotationRecord } from './rotation-log.js';

export type RotationPhase = 'single' | 'announce' | 'switched';

export interface IdentityFiles {
  current: string;
  next: string;
  previous: string;
  log: string;
}

/** The files beside the identity key `keys/identity.pem`. */
export function identityFiles(privatePath: string): IdentityFiles {
  const dir = dirname(privatePath);
  return { current: privatePath, next: join(dir, 'identity-next.pem'), previous: join(dir, 'identity-previous.pem'), log: join(dir, 'identity-rotations.json') };
}

export interface IdentityKeySet {
  phase: RotationPhase;
  /** The key that signs handshakes, change-log heads and archive origins now. */
  current: IdentityKey;
  next?: IdentityKey;
  previous?: IdentityKey;
  /** The rotation log, oldest first, signatures verified (an entry that fails is left out). */
  rotations: RotationRecord[];
  /** A rollover was started here once (the rotation log exists, even if an abort emptied it). */
  rotated: boolean;
}

function removeIfPresent(path: string): void {
  try {
    unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

/**
 * Loads the private keys of every phase (each file checked like identity.pem: mode 0600, owned
 * by this process, no symlink) and the verified rotation log. Repairs an interrupted switch.
 * Throws IdentityKeyError / IdentityRotationError.
 */
export function loadIdentityKeySet(privatePath: string): IdentityKeySet {
  const f = identityFiles(privatePath);
  const current = loadIdentity(f.current);
  let next = existsSync(f.next) ? loadIdentity(f.next) : undefined;
  let previous = existsSync(f.previous) ? loadIdentity(f.previous) : undefined;
  if (next && previous) {
    // A switch stopped after linking identity.pem as previous, before the rename: undo the link.
    if (previous.fingerprint !== current.fingerprint) {
      throw new IdentityRotationError('ROTATION_LOG_INVALID', `${f.next} and ${f.previous} both exist and ${f.previous} is not the current key; keep the right one (commusicctl keys rotate-identity status)`);
    }
    removeIfPresent(f.previous);
    removeIfPresent(identityPublicPath(f.previous));
    previous = undefined;
  }
  if (previous && previous.fingerprint === current.fingerprint) {
    removeIfPresent(f.previous);
    removeIfPresent(identityPublicPath(f.previous));
    previous = undefined;
  }
  if (next && next.fingerprint === current.fingerprint) {
    // The rename of a switch happened but the next file's twin survived (hard link): drop it.
    removeIfPresent(f.next);
    removeIfPresent(identityPublicPath(f.next));
    next = undefined;
  }
  ensurePublicKeyFile(f.current, current);
  if (next) ensurePublicKeyFile(f.next, next);
  else removeIfPresent(identityPublicPath(f.next));
  if (previous) ensurePublicKeyFile(f.previous, previous);
  else removeIfPresent(identityPublicPath(f.previous));
  const rotations = chained(readRotationLog(f.log), current.fingerprint, next?.fingerprint);
  return { phase: next ? 'announce' : previous ? 'switched' : 'single', current, ...(next ? { next } : {}), ...(previous ? { previous } : {}), rotations, rotated: existsSync(f.log) };
}

/**
 * The straight chain of verified rotations back from the current key, oldest first, and the
 * announced current -> next statement last. Each key has at most one predecessor: walking back
 * from the key k whose incoming statement sits at index i of the log (the end of the log for the
 * current key), its predecessor is the first verified statement "p -> k" before i, with a time
 * not after the later statement's. The log is append-only in the order of the rollovers, so a
 * statement planted later (say X -> A made with a retired key A's private half) neither displaces
 * the genuine one nor slots in after A's own succession: never followed, never trusted, never in
 * the notice. A key appears once (no cycles).
 */
function chained(log: readonly RotationRecord[], currentFp: string, nextFp?: string): RotationRecord[] {
  const fps = log.map((r) => ({ old: fingerprintOf(r.old), new: fingerprintOf(r.new) }));
  const valid = log.map((r) => verifyRotation(r));
  const back: RotationRecord[] = [];
  const seen = new Set([currentFp]);
  let k = currentFp;
  let before = log.length;
  let notAfter = Infinity;
  for (;;) {
    let found = -1;
    for (let i = 0; i < before; i++) {
      if (valid[i] && fps[i]!.new === k && log[i]!.time <= notAfter && !seen.has(fps[i]!.old)) {
        found = i;
        break;
      }
    }
    if (found < 0) break;
    const r = log[found]!;
    back.push(r);
    k = fps[found]!.old;
    seen.add(k);
    before = found;
    notAfter = r.time;
  }
  const out = back.reverse();
  if (nextFp !== undefined) {
    for (let i = log.length - 1; i >= 0; i--) {
      if (valid[i] && fps[i]!.old === currentFp && fps[i]!.new === nextFp) {
        out.push(log[i]!);
        break;
      }
    }
  }
  return out;
}

function lastRotation(rotations: readonly RotationRecord[], oldFp: string, newFp: string): RotationRecord | undefined {
  for (let i = rotations.length - 1; i >= 0; i--) {
    const r = rotations[i]!;
    if (fingerprintOf(r.old) === oldFp && fingerprintOf(r.new) === newFp) return r;
  }
  return undefined;
}

export interface RotationStepResult {
  phase: RotationPhase;
  current: string;
  next?: string;
  previous?: string;
  retired?: string;
}

/**
 * single -> announce: a new RSA-2048 next key (identity-next.pem, mode 0600) and the rotation
 * statement signed by the current and the next key. `now` in ms since the epoch.
 */
export function startIdentityRotation(privatePath: string, now: number): RotationStepResult {
  const set = loadIdentityKeySet(privatePath);
  if (set.phase === 'announce') throw new IdentityRotationError('ROTATION_IN_PROGRESS', `a next identity key ${set.next!.fingerprint} is already announced; "keys rotate-identity switch" or "abort"`);
  if (set.phase === 'switched') throw new IdentityRotationError('ROTATION_IN_PROGRESS', `the previous key ${set.previous!.fingerprint} is not retired yet; "keys rotate-identity retire" first`);
  const f = identityFiles(privatePath);
  const next = generateIdentity();
  const statement = signRotation(set.current, next, now);
  // The statement first: a next key without one is never announced; one without a key is ignored.
  writeRotationLog(f.log, [...readRotationLog(f.log), statement]);
  saveIdentity(f.next, next);
  return { phase: 'announce', current: set.current.fingerprint, next: next.fingerprint };
}

/** announce -> switched: the next key signs from now on; the old one stays as previous. */
export function switchIdentity(privatePath: string, now: number): RotationStepResult {
  const set = loadIdentityKeySet(privatePath);
  if (set.phase !== 'announce') throw new IdentityRotationError('WRONG_PHASE', set.phase === 'switched' ? 'already switched; "keys rotate-identity retire" ends the rotation' : 'no next identity key; "keys rotate-identity start" first');
  const f = identityFiles(privatePath);
  const log = readRotationLog(f.log);
  const r = lastRotation(log, set.current.fingerprint, set.next!.fingerprint);
  if (!r || !verifyRotation(r)) throw new IdentityRotationError('ROTATION_LOG_INVALID', `no valid rotation statement for ${set.current.fingerprint} -> ${set.next!.fingerprint} in ${f.log}`);
  r.switchedAt = new Date(now).toISOString();
  writeRotationLog(f.log, log);
  // previous = a hard link to the current file (same inode, mode 0600), then the atomic rename.
  removeIfPresent(f.previous);
  linkSync(f.current, f.previous);
  ensurePublicKeyFile(f.previous, set.current);
  fsyncDir(dirname(f.current));
  renameSync(f.next, f.current);
  fsyncDir(dirname(f.current));
  ensurePublicKeyFile(f.current, set.next!);
  removeIfPresent(identityPublicPath(f.next));
  return { phase: 'switched', current: set.next!.fingerprint, previous: set.current.fingerprint };
}

/** switched -> single: the previous private key is deleted; its public key stays in the log. */
export function retireIdentity(privatePath: string, now: number): RotationStepResult {
  const set = loadIdentityKeySet(privatePath);
  if (set.phase !== 'switched') throw new IdentityRotationError('WRONG_PHASE', set.phase === 'announce' ? 'the next key is not in use yet; "keys rotate-identity switch" first' : 'no previous identity key to retire');
  const f = identityFiles(privatePath);
  const log = readRotationLog(f.log);
  const r = lastRotation(log, set.previous!.fingerprint, set.current.fingerprint);
  // Without its statement the retired key's public half would be lost, and with it every
  // signature it made: refuse rather than delete.
  if (!r || !verifyRotation(r)) throw new IdentityRotationError('ROTATION_LOG_INVALID', `no valid rotation statement for ${set.previous!.fingerprint} -> ${set.current.fingerprint} in ${f.log}; restore that file from a backup before retiring`);
  r.retiredAt = new Date(now).toISOString();
  writeRotationLog(f.log, log);
  removeIfPresent(f.previous);
  removeIfPresent(identityPublicPath(f.previous));
  fsyncDir(dirname(f.current));
  return { phase: 'single', current: set.current.fingerprint, retired: set.previous!.fingerprint };
}

/** announce -> single: the next key and its statement are dropped (clients unpin it on their next notice). */
export function abortIdentityRotation(privatePath: string): RotationStepResult {
  const set = loadIdentityKeySet(privatePath);
  if (set.phase !== 'announce') throw new IdentityRotationError('WRONG_PHASE', set.phase === 'switched' ? 'already switched: a switched key is retired, not aborted ("keys rotate-identity retire")' : 'no rotation to abort');
  const f = identityFiles(privatePath);
  const nextFp = set.next!.fingerprint;
  writeRotationLog(f.log, readRotationLog(f.log).filter((r) => !(fingerprintOf(r.old) === set.current.fingerprint && fingerprintOf(r.new) === nextFp)));
  removeIfPresent(f.next);
  removeIfPresent(identityPublicPath(f.next));
  fsyncDir(dirname(f.current));
  return { phase: 'single', current: set.current.fingerprint };
}

export type KeyRole = 'current' | 'next' | 'previous' | 'retired';

export interface TrustedIdentityKey {
  spki: Buffer;
  fingerprint: string;
  role: KeyRole;
  /** For retired keys: when it was retired (or switched away from) and its successor's fingerprint. */
  retiredAt?: string;
  successor?: string;
}

/**
 * Every public key this data folder's signatures may carry, read from public files only
 * (identity.pub, identity-next.pub, identity-previous.pub, identity-rotations.json): the current
 * key, the next and previous keys of a rotation in progress, and every retired key reachable from
 * the current key through rotation statements whose two signatures verify (a key added to the
 * log by someone without the successor's private key is not trusted). Empty when the folder has
 * no identity.pub.
 */
export function trustedIdentityKeys(privatePath: string): TrustedIdentityKey[] {
  const f = identityFiles(privatePath);
  const cur = loadPublicIdentity(f.current);
  if (!cur) return [];
  const out = new Map<string, TrustedIdentityKey>([[cur.fingerprint, { spki: cur.spki, fingerprint: cur.fingerprint, role: 'current' }]]);
  const log = (() => {
    try {
      return readRotationLog(f.log).filter(verifyRotation);
    } catch {
      return [];
    }
  })();
  const next = loadPublicIdentity(f.next);
  if (next && lastRotation(log, cur.fingerprint, next.fingerprint)) out.set(next.fingerprint, { spki: next.spki, fingerprint: next.fingerprint, role: 'next' });
  const prev = loadPublicIdentity(f.previous);
  // The straight chain back from the current key: each statement's new key vouches for its old
  // key, one predecessor per key (chained); statements off the chain are trusted for nothing.
  const back = chained(log, cur.fingerprint).reverse();
  for (const r of back) {
    const fp = { old: fingerprintOf(r.old), new: fingerprintOf(r.new) };
    if (out.has(fp.old)) break;
    const isPrev = prev !== undefined && prev.fingerprint === fp.old;
    out.set(fp.old, { spki: r.old, fingerprint: fp.old, role: isPrev ? 'previous' : 'retired', ...(isPrev ? {} : { retiredAt: r.retiredAt ?? r.switchedAt ?? new Date(r.time).toISOString() }), successor: fp.new });
  }
  return [...out.values()];
}

/** A verifier for change-log heads and anchors (storage/audit-log.ts AuditVerifier) over these keys, looked up by fingerprint. */
export function keyRingVerifier(keys: readonly { spki: Uint8Array; fingerprint: string }[]): { verify(bytes: Uint8Array, signature: Uint8Array, fingerprint: string): boolean } {
  const byFp = new Map(keys.map((k) => [k.fingerprint, k.spki]));
  return { verify: (bytes, sig, fp) => { const k = byFp.get(fp); return k !== undefined && verifyTranscript(k, bytes, sig); } };
}

export interface IdentityStatus {
  phase: RotationPhase;
  /** Which key signs handshakes now. */
  signingKey: string;
  keys: Array<{ fingerprint: string; role: KeyRole; retiredAt?: string; successor?: string }>;
  rotations: Array<{ old: string; new: string; addedAt: string; switchedAt?: string; retiredAt?: string }>;
}

/** What `keys rotate-identity status` prints: the phase and every key, from public files only. */
export function identityStatus(privatePath: string): IdentityStatus {
  const f = identityFiles(privatePath);
  const keys = trustedIdentityKeys(privatePath);
  if (keys.length === 0) throw new IdentityKeyError('KEY_FILE_MISSING', `${identityPublicPath(f.current)} does not exist; create the keys with "commusicctl keys init"`);
  const phase: RotationPhase = keys.some((k) => k.role === 'next') ? 'announce' : keys.some((k) => k.role === 'previous') ? 'switched' : 'single';
  return {
    phase,
    signingKey: keys.find((k) => k.role === 'current')!.fingerprint,
    keys: keys.map((k) => ({ fingerprint: k.fingerprint, role: k.role, ...(k.retiredAt ? { retiredAt: k.retiredAt } : {}), ...(k.successor ? { successor: k.successor } : {}) })),
    rotations: chained(readRotationLog(f.log), keys.find((k) => k.role === 'current')!.fingerprint, keys.find((k) => k.role === 'next')?.fingerprint).map((r) => ({ old: fingerprintOf(r.old), new: fingerprintOf(r.new), addedAt: new Date(r.time).toISOString(), ...(r.switchedAt ? { switchedAt: r.switchedAt } : {}), ...(r.retiredAt ? { retiredAt: r.retiredAt } : {}) })),
  };
}
