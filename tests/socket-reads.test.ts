import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';
import { once } from 'node:events';
import { MAX_SPARE_READ_BUFFERS, readBufferCounts } from '../protocol/read-buffers.js';
import { readIntoUserBuffers, userReadsBackend } from '../daemon/edge/user-reads.js';
import { startDaemon, type TestDaemon } from './helpers/daemon.js';
import { echoIntact } from './helpers/echo-check.js';

/**
 * Socket reads into reused buffers over the daemon (issue 13, daemon/edge/user-reads.ts): on
 * this Node the start-up self test passes, accepted sockets read into the daemon's buffers,
 * and a streamed echo reuses a handful of read buffers instead of a fresh buffer per read,
 * with every byte intact. tests/socket-reads-fallback.test.ts runs the same echo on the
 * ordinary path.
 */
let td: TestDaemon;

before(async () => {
  td = await startDaemon();
});

after(async () => {
  await td.stop();
});

test('the self test passes on this Node: accepted sockets read into reused buffers', () => {
  assert.deepEqual(userReadsBackend(), { impl: 'user-buffer' });
});

test('an 8 MiB echo arrives intact through a few reused read buffers', { timeout: 60000 }, async () => {
  const c0 = readBufferCounts();
  await echoIntact(td, 8, '127.0.0.81', false);
  const c1 = readBufferCounts();
  const made = c1.made - c0.made;
  const reused = c1.reused - c0.reused;
  // 8 MiB is 130 records of 64 KiB: each went through a read buffer, nearly all of them reused.
  assert.ok(made + reused >= 100, `read buffers taken: ${made} made, ${reused} reused`);
  assert.ok(made <= 2 * MAX_SPARE_READ_BUFFERS, `at most a few read buffers made (${made})`);
});

test('pipelined pings with 40,000-byte payloads beside an echo: every answer carries its own data (views pin their buffers)', { timeout: 60000 }, async () => {
  await echoIntact(td, 4, '127.0.0.83', true);
});

test('a socket that is already reading is left to the ordinary path', async () => {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const client = createConnection((server.address() as AddressInfo).port, '127.0.0.1');
  const [accepted] = (await once(server, 'connection')) as [Socket];
  try {
    // Not paused on connect: Node started reading it the ordinary way.
    assert.equal(readIntoUserBuffers(accepted, () => Buffer.alloc(10), () => undefined), false);
    const got = once(accepted, 'data');
    client.write('still ordinary');
    assert.equal(String((await got)[0]), 'still ordinary');
  } finally {
    accepted.destroy();
    client.destroy();
    server.close();
  }
});
