/**
 * Bounds of the control socket (daemon/ops/control-socket.ts): an answer larger than the limit
 * becomes the error RESPONSE_TOO_LARGE, an operation that does not finish is answered
 * CONTROL_TIMEOUT by the daemon, a connection runs a bounded number of operations at once
 * (CONTROL_BUSY), and commusicctl's side stops reading an answer past its limit (CONTROL_FAILED)
 * instead of buffering without end. Before, none of these had a bound.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { z } from 'zod';
import { nullLogger } from '../daemon/common/log.js';
import { ControlServer, callControl } from '../daemon/ops/control-socket.js';
import { OperationRegistry } from '../daemon/ops/operations.js';

const dir = mkdtempSync(join(tmpdir(), 'commusic-ctl-bounds-'));
const path = join(dir, 'control.sock');
let server: ControlServer;
const never = new Promise<never>(() => undefined);

before(async () => {
  const reg = new OperationRegistry<object>()
    .register({ name: 'big', schema: z.object({}), run: () => ({ text: 'x'.repeat(5000) }) })
    .register({ name: 'small', schema: z.object({}), run: () => ({ text: 'ok' }) })
    .register({ name: 'hang', schema: z.object({}), run: () => never });
  server = await ControlServer.listen(path, reg, {}, nullLogger(), { maxResponseBytes: 1000, opTimeoutMs: 300, maxPending: 2 });
});
after(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

test('an answer over the limit is the error RESPONSE_TOO_LARGE; a small one passes', async () => {
  assert.deepEqual((await callControl(path, 'small', {}))?.result, { text: 'ok' });
  await assert.rejects(callControl(path, 'big', {}), (e: { code?: string; message?: string }) => e.code === 'RESPONSE_TOO_LARGE' && /more than the control socket's 1000/.test(e.message ?? ''));
});

test('an operation that does not finish is answered CONTROL_TIMEOUT by the daemon', async () => {
  await assert.rejects(callControl(path, 'hang', {}, 60_000), (e: { code?: string; message?: string }) => e.code === 'CONTROL_TIMEOUT' && /did not finish within/.test(e.message ?? ''));
});

test('a connection runs at most maxPending operations at once (CONTROL_BUSY)', async () => {
  const c = createConnection(path);
  c.setEncoding('utf8');
  const lines: Array<{ id: number; ok: boolean; error?: { code: string } }> = [];
  let buf = '';
  const busy = new Promise<void>((resolve) => {
    c.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        lines.push(JSON.parse(buf.slice(0, nl)));
        buf = buf.slice(nl + 1);
        if (lines.some((l) => l.error?.code === 'CONTROL_BUSY')) resolve();
      }
    });
  });
  c.write([1, 2, 3].map((id) => JSON.stringify({ id, op: 'hang', args: {} })).join('\n') + '\n');
  await busy;
  assert.equal(lines.find((l) => l.error?.code === 'CONTROL_BUSY')?.id, 3);
  c.destroy();
});

test("commusicctl's side stops reading an answer past its limit (CONTROL_FAILED)", async () => {
  const fake = join(dir, 'fake.sock');
  const chunk = 'y'.repeat(64 * 1024);
  const srv = createServer((s) => {
    s.on('error', () => undefined);
    const pump = () => {
      while (!s.destroyed && s.write(chunk));
      if (!s.destroyed) s.once('drain', pump);
    };
    pump();
  });
  await new Promise<void>((r) => srv.listen(fake, r));
  try {
    await assert.rejects(callControl(fake, 'anything', {}, 60_000, undefined, 256 * 1024), (e: { code?: string }) => e.code === 'CONTROL_FAILED');
  } finally {
    await new Promise<void>((r) => srv.close(() => r()));
  }
});
