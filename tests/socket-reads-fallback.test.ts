import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readBufferCounts } from '../protocol/read-buffers.js';
import { SOCKET_READS_ENV, userReadsBackend } from '../daemon/edge/user-reads.js';
import { startDaemon, type TestDaemon } from './helpers/daemon.js';
import { echoIntact } from './helpers/echo-check.js';

/**
 * The ordinary read path (a fresh buffer per socket read), as on a Node where the reads into
 * reused buffers are not available (daemon/edge/user-reads.ts): forced here for this whole
 * process with COMMUSIC_SOCKET_READS=node before the daemon's self test runs.
 */
process.env[SOCKET_READS_ENV] = 'node';
let td: TestDaemon;

before(async () => {
  td = await startDaemon();
});

after(async () => {
  await td.stop();
});

test('COMMUSIC_SOCKET_READS=node: the daemon reads the ordinary way and says why', () => {
  assert.deepEqual(userReadsBackend(), { impl: 'node', reason: `${SOCKET_READS_ENV}=node` });
});

test('on the ordinary path an 8 MiB echo and pipelined pings arrive intact, and no read buffer is used', { timeout: 60000 }, async () => {
  const c0 = readBufferCounts();
  await echoIntact(td, 8, '127.0.0.82', true);
  const c1 = readBufferCounts();
  assert.equal(c1.made + c1.reused, c0.made + c0.reused);
});
