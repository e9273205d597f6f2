import { test } from 'node:test';
import assert from 'node:assert/strict';
import { configSchema } from '../daemon/main/config.js';
import { registerCoreCommands } from '../daemon/edge/core-commands.js';
import { Dispatcher } from '../daemon/edge/dispatcher.js';

/** Issue 16: diagnostic commands are off unless configured (`diag.echoStream`). */
test('diag.echoStream is not offered by default, only when configured', () => {
  const cfg = configSchema.parse({});
  assert.equal(cfg.diag.echoStream, false);
  const info = () => ({ name: 'x', version: '0', protocolVersion: 1, fingerprint: 'f' });
  const off = new Dispatcher();
  registerCoreCommands(off, info, Date.now, cfg.diag);
  assert.ok(off.names().includes('ping'));
  assert.ok(!off.names().includes('diag.echoStream'));
  const on = new Dispatcher();
  registerCoreCommands(on, info, Date.now, configSchema.parse({ diag: { echoStream: true } }).diag);
  assert.ok(on.names().includes('diag.echoStream'));
});
