import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { connect } from '../../client/connection.js';
import type { TestDaemon } from './daemon.js';

/**
 * Uploads `mib` MiB of random bytes to diag.echoStream in pieces of odd sizes and checks that
 * the echo is the same bytes (SHA-256); with `pings`, 100 pipelined pings alongside, half with
 * 40,000-byte payloads (views of their records where the path allows it), each answered with
 * its own data.
 */
export async function echoIntact(td: TestDaemon, mib: number, localAddress: string, pings: boolean): Promise<void> {
  const c = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress, requestTimeoutMs: 60000 });
  try {
    const sent = createHash('sha256');
    const total = mib * 1024 * 1024;
    async function* source(): AsyncGenerator<Uint8Array> {
      for (let at = 0, i = 0; at < total; i++) {
        const piece = randomBytes(Math.min(total - at, [1, 777, 65024, 100000, 4096, 33333][i % 6]!));
        sent.update(piece);
        at += piece.length;
        yield piece;
      }
    }
    const answered = Array.from({ length: pings ? 100 : 0 }, (_, i) => {
      const data = randomBytes(i % 2 === 0 ? 40000 : 64);
      return c.request('ping', { data }).then((r) => assert.ok(Buffer.from((r.payload as { data: Uint8Array }).data).equals(data), `ping ${i} answered with its own data`));
    });
    const res = await c.request('diag.echoStream', {}, { upload: source() });
    const got = createHash('sha256');
    let n = 0;
    for await (const piece of res.download!) {
      got.update(piece);
      n += piece.length;
    }
    await Promise.all(answered);
    assert.equal(n, total);
    assert.equal(got.digest('hex'), sent.digest('hex'), 'the echo is the bytes sent');
  } finally {
    await c.close();
  }
}
