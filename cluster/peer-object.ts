/**
 * A transferred object on the peer channel (issue 14, "Security of the new paths"; docs/CLUSTER.md
 * "Server-to-server transfer"): its name fields, the announced facts (size, SHA-256, meta) checked
 * against the bounds, and its bytes checked against those facts while they flow. Both sides of
 * cluster/peer-channel.ts use these; nothing here does I/O.
 */
import { createHash } from 'node:crypto';
import { ClusterError } from './errors.js';
import { checkClubId } from './keys.js';
import type { PeerKind, PeerObject } from './peer-types.js';

export const PEER_KINDS: readonly PeerKind[] = ['document', 'snapshot'];
/** An object's name: 0 to 128 of [A-Za-z0-9._-], not starting with a dot. */
const OBJECT_NAME = /^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,127})?$/;
const SHA256_HEX = /^[0-9a-f]{64}$/;
const MAX_META_KEYS = 16;

/** Checks an object's name fields. @throws ClusterError INVALID_ARGUMENT */
export function checkPeerObject(o: { kind?: unknown; club?: unknown; name?: unknown }): PeerObject {
  if (typeof o.kind !== 'string' || !PEER_KINDS.includes(o.kind as PeerKind)) throw new ClusterError('INVALID_ARGUMENT', 'unknown peer object kind');
  if (typeof o.club !== 'string') throw new ClusterError('INVALID_ARGUMENT', 'peer object without a club');
  if (typeof o.name !== 'string' || !OBJECT_NAME.test(o.name)) throw new ClusterError('INVALID_ARGUMENT', 'invalid peer object name');
  return { kind: o.kind as PeerKind, club: checkClubId(o.club), name: o.name };
}

/** Checks announced size, SHA-256 and meta against the bounds. @throws ClusterError PEER_OBJECT_BAD */
export function checkPayloadFacts(f: { size?: unknown; sha256?: unknown; meta?: unknown }, maxBytes: number): { size: number; sha256: string; meta?: Record<string, string | number> } {
  if (!Number.isSafeInteger(f.size) || (f.size as number) < 0) throw new ClusterError('PEER_OBJECT_BAD', 'invalid object size');
  if ((f.size as number) > maxBytes) throw new ClusterError('PEER_OBJECT_BAD', `object of ${f.size as number} bytes exceeds the limit of ${maxBytes}`);
  if (typeof f.sha256 !== 'string' || !SHA256_HEX.test(f.sha256)) throw new ClusterError('PEER_OBJECT_BAD', 'invalid object SHA-256');
  const out: { size: number; sha256: string; meta?: Record<string, string | number> } = { size: f.size as number, sha256: f.sha256 };
  if (f.meta === undefined || f.meta === null) return out;
  if (typeof f.meta !== 'object' || Array.isArray(f.meta)) throw new ClusterError('PEER_OBJECT_BAD', 'invalid object meta');
  const entries = Object.entries(f.meta as Record<string, unknown>);
  if (entries.length > MAX_META_KEYS) throw new ClusterError('PEER_OBJECT_BAD', 'too many meta fields');
  const meta: Record<string, string | number> = {};
  for (const [k, v] of entries) {
    if (!/^[A-Za-z][A-Za-z0-9_]{0,63}$/.test(k)) throw new ClusterError('PEER_OBJECT_BAD', 'invalid meta field name');
    if (!((typeof v === 'string' && v.length <= 256) || (typeof v === 'number' && Number.isFinite(v)))) throw new ClusterError('PEER_OBJECT_BAD', 'invalid meta value');
    meta[k] = v;
  }
  return { ...out, meta };
}

/**
 * The bytes of `source`, checked against `size` while they flow (a byte past it ends the stream)
 * and against `sha256` at the end; `onVerified` is called once the last byte checked out.
 * @throws ClusterError PEER_OBJECT_BAD
 */
export async function* verifiedChunks(source: AsyncIterable<Uint8Array>, size: number, sha256: string, onVerified?: () => void): AsyncGenerator<Uint8Array> {
  const h = createHash('sha256');
  let n = 0;
  for await (const c of source) {
    n += c.length;
    if (n > size) throw new ClusterError('PEER_OBJECT_BAD', `more bytes than the announced ${size}`);
    h.update(c);
    yield c;
  }
  if (n !== size) throw new ClusterError('PEER_OBJECT_BAD', `${n} bytes instead of the announced ${size}`);
  if (h.digest('hex') !== sha256) throw new ClusterError('PEER_OBJECT_BAD', 'SHA-256 of the bytes does not match the announced one');
  onVerified?.();
}
