/**
 * The log of identity key rotations, `keys/identity-rotations.json` (crypto/identity-keyring.ts
 * runs the rollover; crypto/identity-rotation.ts signs and checks each statement): read with its
 * shapes checked (not its signatures), written whole and atomically, public keys and signatures
 * only (mode 0644, like identity.pub), at most MAX_ROTATION_LOG rotations.
 */
import { existsSync, readFileSync } from 'node:fs';
import { atomicWriteFileSync } from './atomic-file.js';
import { IDENTITY_SIGNATURE_LEN, IDENTITY_SPKI_LEN } from './identity.js';
import type { RotationStatement } from './identity-rotation.js';

/** Kept in the log: at most this many rotations (older ones are dropped from the file, oldest first). */
export const MAX_ROTATION_LOG = 64;

export interface RotationRecord extends RotationStatement {
  /** ISO time of the switch to `new`, and of the retirement of `old`. */
  switchedAt?: string;
  retiredAt?: string;
}

/** A rollover step refused: out of order (WRONG_PHASE, ROTATION_IN_PROGRESS) or a damaged rotation log. */
export class IdentityRotationError extends Error {
  constructor(
    readonly code: 'ROTATION_IN_PROGRESS' | 'NO_ROTATION' | 'WRONG_PHASE' | 'ROTATION_LOG_INVALID',
    message: string,
  ) {
    super(message);
    this.name = 'IdentityRotationError';
  }
}

interface LogFile {
  version: 1;
  rotations: Array<{ old: string; new: string; time: number; oldSignature: string; newSignature: string; switchedAt?: string; retiredAt?: string }>;
}

const b64 = (s: unknown, len: number, what: string): Buffer => {
  const b = typeof s === 'string' && /^[A-Za-z0-9+/]+={0,2}$/.test(s) ? Buffer.from(s, 'base64') : undefined;
  if (!b || b.length !== len) throw new IdentityRotationError('ROTATION_LOG_INVALID', `identity-rotations.json: ${what} is not ${len} bytes of base64`);
  return b;
};
const isoOrUndef = (s: unknown, what: string): string | undefined => {
  if (s === undefined) return undefined;
  if (typeof s !== 'string' || s.length > 40 || Number.isNaN(Date.parse(s))) throw new IdentityRotationError('ROTATION_LOG_INVALID', `identity-rotations.json: ${what} is not an ISO time`);
  return s;
};

/** Reads the rotation log (an empty list when there is none). Checks shapes, not signatures. */
export function readRotationLog(path: string): RotationRecord[] {
  if (!existsSync(path)) return [];
  let doc: LogFile;
  try {
    doc = JSON.parse(readFileSync(path, 'utf8')) as LogFile;
  } catch {
    throw new IdentityRotationError('ROTATION_LOG_INVALID', `${path} is not JSON`);
  }
  if (!doc || doc.version !== 1 || !Array.isArray(doc.rotations) || doc.rotations.length > MAX_ROTATION_LOG) {
    throw new IdentityRotationError('ROTATION_LOG_INVALID', `${path} is not a rotation log (version 1, at most ${MAX_ROTATION_LOG} rotations)`);
  }
  return doc.rotations.map((r, i) => {
    const time = r?.time;
    if (!Number.isSafeInteger(time) || time < 0) throw new IdentityRotationError('ROTATION_LOG_INVALID', `identity-rotations.json: rotation ${i + 1} has no valid time`);
    const switchedAt = isoOrUndef(r.switchedAt, `rotation ${i + 1} switchedAt`);
    const retiredAt = isoOrUndef(r.retiredAt, `rotation ${i + 1} retiredAt`);
    return {
      old: b64(r.old, IDENTITY_SPKI_LEN, `rotation ${i + 1} old`),
      new: b64(r.new, IDENTITY_SPKI_LEN, `rotation ${i + 1} new`),
      time,
      oldSignature: b64(r.oldSignature, IDENTITY_SIGNATURE_LEN, `rotation ${i + 1} oldSignature`),
      newSignature: b64(r.newSignature, IDENTITY_SIGNATURE_LEN, `rotation ${i + 1} newSignature`),
      ...(switchedAt ? { switchedAt } : {}),
      ...(retiredAt ? { retiredAt } : {}),
    };
  });
}

/** Writes the whole log (the newest MAX_ROTATION_LOG rotations), atomically. */
export function writeRotationLog(path: string, rotations: readonly RotationRecord[]): void {
  const doc: LogFile = {
    version: 1,
    rotations: rotations.slice(-MAX_ROTATION_LOG).map((r) => ({
      old: r.old.toString('base64'),
      new: r.new.toString('base64'),
      time: r.time,
      oldSignature: r.oldSignature.toString('base64'),
      newSignature: r.newSignature.toString('base64'),
      ...(r.switchedAt ? { switchedAt: r.switchedAt } : {}),
      ...(r.retiredAt ? { retiredAt: r.retiredAt } : {}),
    })),
  };
  // Public keys and signatures only: readable like identity.pub.
  atomicWriteFileSync(path, Buffer.from(`${JSON.stringify(doc, null, 2)}\n`), 0o644);
}
