import { test } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { connect } from '../client/connection.js';
import { CommandError } from '../daemon/edge/command-errors.js';
import { startDaemon } from './helpers/daemon.js';

/** Handler failures reach the client as typed errors without internals, and the session survives. */
test('a handler failure is INTERNAL without detail; an oversized response is TOO_LARGE; the connection stays usable', { timeout: 30_000 }, async () => {
  const t = await startDaemon();
  t.daemon.dispatcher.register({
    name: 'test.explode',
    schema: z.object({}).strict(),
    handler: async () => {
      throw new Error('secret internal detail /etc/passwd at line 42');
    },
  });
  t.daemon.dispatcher.register({ name: 'test.huge', schema: z.object({}).strict(), handler: async () => ({ payload: { blob: new Uint8Array(70_000) } }) });
  t.daemon.dispatcher.register({
    name: 'test.refuse',
    schema: z.object({}).strict(),
    handler: async () => {
      throw new CommandError('NOT_FOUND', 'no such person');
    },
  });
  const c = await connect({ host: '127.0.0.1', port: t.port, fingerprint: t.fingerprint });
  try {
    await assert.rejects(c.request('test.explode'), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'INTERNAL');
      assert.doesNotMatch(e.message, /secret|passwd|line 42|at /);
      return true;
    });
    await assert.rejects(c.request('test.huge'), (e: Error & { code?: string }) => e.code === 'TOO_LARGE');
    await assert.rejects(c.request('test.refuse'), (e: Error & { code?: string; message: string }) => e.code === 'NOT_FOUND' && e.message === 'no such person');
    assert.ok((await c.ping()) >= 0, 'the session still works');
    assert.equal(t.violations.length, 0, 'server-side failures are not the client’s violations');
  } finally {
    await c.close();
    await t.stop();
  }
});
