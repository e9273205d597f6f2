import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';

/**
 * A pass-through stream that counts and SHA-256-hashes what flows through it, for writers that
 * record a file's size and hash (documents, backup archives). `tooLarge` fails the stream once
 * more than `maxBytes` have passed.
 */
export type HashTap = Transform & { digest(): { size: number; sha256: string } };

export function hashTap(limit?: { maxBytes: number; tooLarge: () => Error }): HashTap {
  const h = createHash('sha256');
  let size = 0;
  const t = new Transform({
    highWaterMark: 1 << 20,
    transform(chunk: Buffer, _e, cb: TransformCallback) {
      size += chunk.length;
      if (limit && size > limit.maxBytes) return cb(limit.tooLarge());
      h.update(chunk);
      cb(null, chunk);
    },
  }) as HashTap;
  t.digest = () => ({ size, sha256: h.digest('hex') });
  return t;
}
