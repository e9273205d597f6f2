import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { connect } from '../client/connection.js';
import { ClientError } from '../client/errors.js';
import { INITIAL_STREAM_WINDOW, MAX_CHUNK_LEN } from '../protocol/constants.js';
import { ServerSession } from '../protocol/server-session.js';
import { testIdentity } from './helpers/pair.js';

/**
 * The client SDK against a misbehaving (but correctly keyed) server: a download sent past the
 * credit the client granted must end the connection with PROTOCOL_ERROR, not crash the client
 * process with an exception thrown from a socket handler.
 */
function fakeServer(onRequest: (session: ServerSession, id: number, socket: Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer((socket) => {
    const session = new ServerSession({ identity: testIdentity() });
    socket.on('error', () => socket.destroy());
    socket.on('data', (d: Buffer) => {
      session.receive(d);
      for (;;) {
        const ev = session.nextEvent();
        if (ev.type === 'message' && ev.message.kind === 'request') onRequest(session, ev.message.id, socket);
        const out = session.takeOutput();
        if (out.length > 0 && !socket.destroyed) socket.write(Buffer.concat(out));
        if (ev.type === 'need-data') return;
        if (ev.type === 'error' || ev.type === 'closed') return void socket.destroy();
      }
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as { port: number }).port })));
}

test('a server that streams past the granted credit gets PROTOCOL_ERROR, and the client process survives', { timeout: 30000 }, async () => {
  const { server, port } = await fakeServer((session, id) => {
    session.sendMessage({ kind: 'response', id, payload: {}, stream: true });
    const data = new Uint8Array(MAX_CHUNK_LEN);
    for (let sent = 0; sent <= 2 * INITIAL_STREAM_WINDOW; sent += data.length) session.sendMessage({ kind: 'chunk', id, data });
  });
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown) => uncaught.push(e);
  process.on('uncaughtException', onUncaught);
  try {
    const c = await connect({ host: '127.0.0.1', port, fingerprint: testIdentity().fingerprint });
    try {
      const res = await c.request('download.too.much', {});
      // Read nothing until the overflow has arrived, so that no credit goes back meanwhile.
      const deadline = Date.now() + 3000;
      while (!c.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(c.closed, true, 'the client ended the connection');
      await assert.rejects(
        (async () => {
          for await (const piece of res.download!) assert.ok(piece.length > 0);
        })(),
        (e: unknown) => e instanceof ClientError && e.code === 'PROTOCOL_ERROR',
      );
    } finally {
      await c.close();
    }
    assert.deepEqual(uncaught, [], 'nothing escaped a socket handler');
  } finally {
    process.off('uncaughtException', onUncaught);
    await new Promise((r) => server.close(r));
  }
});
