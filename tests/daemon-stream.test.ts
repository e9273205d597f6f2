import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { connect } from '../client/connection.js';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { INITIAL_STREAM_WINDOW } from '../protocol/constants.js';
import { startDaemon, waitUntil, type TestDaemon } from './helpers/daemon.js';

/**
 * A slow reader of a large stream: the client uploads 64 MiB to diag.echoStream and does not
 * read the echo. Flow control must stall the upload within a window or two, so neither the
 * server nor the client buffers the stream; once the client reads, the echo arrives intact.
 * This file runs alone in its process so that memory figures mean something.
 */
const TOTAL = 64 * 1024 * 1024;
const PIECE = 1024 * 1024;
const MiB = 1024 * 1024;

let td: TestDaemon;

before(async () => {
  td = await startDaemon();
});

after(async () => {
  await td.stop();
});

// Memory figures are only meaningful after a full collection; expose gc for this process.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const memory = () => {
  gc();
  const m = process.memoryUsage();
  return { rss: m.rss, arrayBuffers: m.arrayBuffers };
};

test('a slow reader of a 64 MiB echo stream stalls the upload and keeps memory bounded; the echo arrives intact', { timeout: 60000 }, async (t) => {
  const c = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.0.70', requestTimeoutMs: 50000 });
  try {
    let produced = 0;
    let uploadDone = false;
    const sent = createHash('sha256');
    // Generated lazily so that the test itself never holds the 64 MiB either.
    async function* source(): AsyncGenerator<Uint8Array> {
      while (produced < TOTAL) {
        const piece = randomBytes(PIECE);
        sent.update(piece);
        produced += piece.length;
        yield piece;
      }
      uploadDone = true;
    }
    const base = memory();
    const res = await c.request('diag.echoStream', {}, { upload: source() });
    assert.ok(res.download, 'the echo comes back as a download stream');

    // Not reading. First the positive condition: the first window went out.
    await waitUntil(() => produced >= INITIAL_STREAM_WINDOW, 20_000, 'the first window to go out');
    // Then wait until the upload has stopped moving. This quiet-period check backs only upper
    // bounds (bytes produced, upload not done, memory growth): a pause caused by a loaded machine
    // ends the loop early, with fewer bytes and less memory, so it cannot make them fail.
    let last = -1;
    for (let i = 0; i < 100 && produced !== last; i++) {
      last = produced;
      await new Promise((r) => setTimeout(r, 150));
    }
    const stalled = memory();
    t.diagnostic(`stalled after ${produced} bytes; buffers +${((stalled.arrayBuffers - base.arrayBuffers) / MiB).toFixed(1)} MiB`);
    assert.equal(uploadDone, false);
    assert.ok(produced <= 4 * MiB, `the upload stalls without credit: ${produced} of ${TOTAL} bytes produced`);
    assert.ok(produced >= INITIAL_STREAM_WINDOW, 'the first window did go out');
    assert.ok(stalled.arrayBuffers - base.arrayBuffers < 16 * MiB, `buffers grew by ${(stalled.arrayBuffers - base.arrayBuffers) / MiB} MiB while stalled`);
    assert.ok(stalled.rss - base.rss < 64 * MiB, `rss grew by ${(stalled.rss - base.rss) / MiB} MiB while stalled`);

    // Read it all now, checking memory stays bounded on the way.
    const got = createHash('sha256');
    let received = 0;
    let peakBuffers = 0;
    let n = 0;
    for await (const piece of res.download!) {
      got.update(piece);
      received += piece.length;
      if (++n % 64 === 0) peakBuffers = Math.max(peakBuffers, memory().arrayBuffers - base.arrayBuffers);
    }
    t.diagnostic(`buffers peaked +${(peakBuffers / MiB).toFixed(1)} MiB while streaming`);
    assert.equal(received, TOTAL, 'every byte came back');
    assert.equal(uploadDone, true);
    assert.equal(got.digest('hex'), sent.digest('hex'), 'the echo is identical to the upload');
    // While data moves, external memory lags behind garbage collection; the bound here only
    // says the stream was never held whole. The stalled figure above is the tight one.
    assert.ok(peakBuffers < TOTAL, `buffers peaked ${peakBuffers / MiB} MiB above the start while streaming ${TOTAL / MiB} MiB`);
    const done = memory();
    assert.ok(done.arrayBuffers - base.arrayBuffers < 16 * MiB, `buffers still ${(done.arrayBuffers - base.arrayBuffers) / MiB} MiB above the start after the stream`);
    assert.ok((await c.ping()) >= 0, 'the connection is still usable');
    assert.equal(td.violations.length, 0);
  } finally {
    await c.close();
  }
  await waitUntil(() => td.daemon.connectionCount === 0, 5000, 'the connection to close');
});
