/**
 * The `identity.keys` NOTICE (docs/PROTOCOL.md section 6.4): how a server tells its clients
 * about an identity key rollover, in the spirit of OpenSSH's hostkeys-00@openssh.com. Pure:
 * payloads in, decisions out; the SDK (client/connection.ts) stores the pins.
 *
 *   [7, "identity.keys", {current: bstr 294, next?: bstr 294, previous?: bstr 294,
 *                         rotations: [{old, new, time, oldSignature, newSignature}] (0..4)}]
 *
 * Rules for a client (section 6.4): the notice counts only when `current` is the key that signed
 * this session's handshake and every rotation statement's two signatures verify; `next` needs a
 * statement current -> next, `previous` one previous -> current. Then the pins for this server
 * become exactly {current, next, previous}. Anything else: the whole notice is ignored.
 */
import { fingerprintOf, IDENTITY_SIGNATURE_LEN, IDENTITY_SPKI_LEN } from '../crypto/identity.js';
import { verifyRotation, type RotationStatement } from '../crypto/identity-rotation.js';

export const IDENTITY_NOTICE_EVENT = 'identity.keys';
/** Rotation statements in one notice: the newest, at most this many. */
export const MAX_NOTICE_ROTATIONS = 4;

export interface IdentityNotice {
  current: Buffer;
  next?: Buffer;
  previous?: Buffer;
  rotations: RotationStatement[];
}

/** The NOTICE payload (a CBOR map) for `n`; keeps the newest MAX_NOTICE_ROTATIONS statements. */
export function encodeIdentityNotice(n: IdentityNotice): Record<string, unknown> {
  return {
    current: n.current,
    ...(n.next ? { next: n.next } : {}),
    ...(n.previous ? { previous: n.previous } : {}),
    rotations: n.rotations.slice(-MAX_NOTICE_ROTATIONS).map((r) => ({ old: r.old, new: r.new, time: r.time, oldSignature: r.oldSignature, newSignature: r.newSignature })),
  };
}

const KEYS = new Set(['current', 'next', 'previous', 'rotations']);
const ROTATION_KEYS = new Set(['old', 'new', 'time', 'oldSignature', 'newSignature']);

function bytes(v: unknown, len: number): Buffer | undefined {
  return v instanceof Uint8Array && v.length === len ? Buffer.from(v) : undefined;
}

function plainMap(v: unknown, keys: ReadonlySet<string>): Record<string, unknown> | undefined {
  if (!v || typeof v !== 'object' || Array.isArray(v) || v instanceof Uint8Array) return undefined;
  for (const k of Object.keys(v)) if (!keys.has(k)) return undefined;
  return v as Record<string, unknown>;
}

/**
 * Parses and verifies a payload: exact shape (no other fields, exact lengths, 0..4 rotations),
 * BOTH signatures of every rotation statement, and the links next/previous need. Returns
 * undefined for anything else, never throws: a forged or damaged notice changes nothing.
 */
export function parseIdentityNotice(payload: unknown): IdentityNotice | undefined {
  const m = plainMap(payload, KEYS);
  if (!m) return undefined;
  const current = bytes(m['current'], IDENTITY_SPKI_LEN);
  const next = m['next'] === undefined ? undefined : bytes(m['next'], IDENTITY_SPKI_LEN);
  const previous = m['previous'] === undefined ? undefined : bytes(m['previous'], IDENTITY_SPKI_LEN);
  const list = m['rotations'];
  if (!current || (m['next'] !== undefined && !next) || (m['previous'] !== undefined && !previous)) return undefined;
  if (!Array.isArray(list) || list.length > MAX_NOTICE_ROTATIONS) return undefined;
  const rotations: RotationStatement[] = [];
  for (const item of list) {
    const r = plainMap(item, ROTATION_KEYS);
    if (!r) return undefined;
    const old = bytes(r['old'], IDENTITY_SPKI_LEN);
    const neu = bytes(r['new'], IDENTITY_SPKI_LEN);
    const oldSignature = bytes(r['oldSignature'], IDENTITY_SIGNATURE_LEN);
    const newSignature = bytes(r['newSignature'], IDENTITY_SIGNATURE_LEN);
    const time = r['time'];
    if (!old || !neu || !oldSignature || !newSignature || typeof time !== 'number' || !Number.isSafeInteger(time) || time < 0) return undefined;
    const s: RotationStatement = { old, new: neu, time, oldSignature, newSignature };
    if (!verifyRotation(s)) return undefined;
    rotations.push(s);
  }
  const linked = (a: Buffer, b: Buffer) => rotations.some((r) => r.old.equals(a) && r.new.equals(b));
  if (next && !linked(current, next)) return undefined;
  if (previous && !linked(previous, current)) return undefined;
  return { current, ...(next ? { next } : {}), ...(previous ? { previous } : {}), rotations };
}

/**
 * The pins (fingerprints) a client keeps for this server after a verified notice received on a
 * session whose handshake `sessionSpki` signed; undefined when the notice is not about that key
 * (then it is ignored).
 */
export function pinsFromNotice(n: IdentityNotice, sessionSpki: Uint8Array): string[] | undefined {
  if (!n.current.equals(Buffer.from(sessionSpki))) return undefined;
  return [n.current, n.next, n.previous].filter((k): k is Buffer => k !== undefined).map(fingerprintOf);
}

/**
 * For a client whose pins do not include the key that signed this handshake: the chain of
 * verified rotation statements leading from one of its pinned fingerprints to `sessionSpki`, or
 * undefined when there is none (then the key change is unexplained: possibly an attack).
 */
export function successionFromPins(n: IdentityNotice, pinned: readonly string[], sessionSpki: Uint8Array): RotationStatement[] | undefined {
  const target = fingerprintOf(sessionSpki);
  if (!n.current.equals(Buffer.from(sessionSpki))) return undefined;
  // Breadth-first over at most MAX_NOTICE_ROTATIONS statements.
  const paths = new Map<string, RotationStatement[]>(pinned.map((p) => [p, []]));
  for (let round = 0; round < n.rotations.length; round++) {
    for (const r of n.rotations) {
      const from = paths.get(fingerprintOf(r.old));
      const to = fingerprintOf(r.new);
      if (from && !paths.has(to)) paths.set(to, [...from, r]);
    }
  }
  const chain = paths.get(target);
  return chain && chain.length > 0 ? chain : undefined;
}

/**
 * What a client remembers about one verified rotation statement of a server (docs/PROTOCOL.md
 * 6.4): `old` was succeeded (announced) by `new`; `switched` once the client has seen `new` sign a
 * session (or a notice on a `new`-signed session names `old` as previous). Fingerprints in
 * canonical lower-case hex.
 */
export interface SuccessionRecord {
  old: string;
  new: string;
  switched: boolean;
}

/** The client's state for one server: pins and remembered successions. */
export interface PinState {
  pins: string[];
  successions: SuccessionRecord[];
}

/** Notices a client processes on one session; later ones are ignored (PROTOCOL.md 6.4, CPU bound). */
export const MAX_NOTICES_PER_SESSION = 2;

/**
 * The client's decision on a verified notice `n` received on a session signed by `sessionSpki`
 * (docs/PROTOCOL.md 6.4 client rules). Returns the new state, or undefined when nothing changes.
 *
 * - The notice must be about the session key (pinsFromNotice), else it is ignored.
 * - A session key K that the client has seen succeeded (a `switched` record K -> S) is a past key:
 *   its sessions may continue during the overlap, but its notices change nothing (a holder of an
 *   old key cannot rewrite the pins).
 * - A session key K with an announced successor S (record K -> S, not switched) may drop S (an
 *   abort: no `next`) or repeat it, but not replace it by another key in one notice.
 * - Records whose old key is no longer pinned are forgotten (an unpinned key gets no notice).
 */
export function applyIdentityNotice(n: IdentityNotice, sessionSpki: Uint8Array, state: PinState): PinState | undefined {
  const pins = pinsFromNotice(n, sessionSpki);
  if (!pins) return undefined;
  const k = fingerprintOf(sessionSpki);
  // The server signs with k now: every announcement of k is confirmed.
  let records = state.successions.map((r) => (r.new === k && !r.switched ? { ...r, switched: true } : { ...r }));
  const promoted = records.some((r, i) => r.switched !== state.successions[i]!.switched);
  const unchanged: PinState | undefined = promoted ? { pins: [...state.pins], successions: records } : undefined;
  if (records.some((r) => r.old === k && r.switched)) return unchanged;
  const nextFp = n.next ? fingerprintOf(n.next) : undefined;
  const announced = records.find((r) => r.old === k && !r.switched);
  if (announced && nextFp !== undefined && nextFp !== announced.new) return unchanged;
  // k's announcement is now exactly `next` (none after an abort).
  records = records.filter((r) => r.old !== k);
  if (nextFp) records.push({ old: k, new: nextFp, switched: false });
  if (n.previous) {
    const prev = fingerprintOf(n.previous);
    records = records.filter((r) => !(r.old === prev && r.new === k));
    records.push({ old: prev, new: k, switched: true });
  }
  records = records.filter((r) => pins.includes(r.old));
  const samePins = pins.length === state.pins.length && pins.every((p) => state.pins.includes(p));
  const key = (r: SuccessionRecord) => `${r.old} ${r.new} ${r.switched}`;
  const sameRecords = records.length === state.successions.length && records.every((r) => state.successions.some((s) => key(s) === key(r)));
  if (samePins && sameRecords) return undefined;
  return { pins, successions: records };
}
