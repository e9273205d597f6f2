import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { openBanSystem } from '../daemon/bans/ban-system.js';
import { ViolationBus } from '../daemon/bans/violations.js';

test('openBanSystem wires bus -> engine -> table -> mailer; bans and mail survive a restart', { timeout: 30_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'commusic-bansys-'));
  const key = Buffer.alloc(32, 3);
  try {
    const bus = new ViolationBus();
    let sys = await openBanSystem({ dataDir: dir, key, bus, mail: { groupInterval: '1h' } });
    bus.report({ ip: '127.0.40.1', kind: 'http', time: Date.now(), detail: 'HTTP request line' });
    assert.ok(sys.table.check('127.0.40.1', Date.now()), 'banned at once');
    assert.equal(sys.table.check('127.0.40.2', Date.now()), undefined, 'a neighbour is not');
    await sys.mailer.flush();
    await sys.close();
    bus.report({ ip: '127.0.40.3', kind: 'tls', time: Date.now(), detail: 'ClientHello' }); // after close: ignored

    sys = await openBanSystem({ dataDir: dir, key, bus: new ViolationBus() });
    try {
      assert.equal(sys.table.check('127.0.40.1', Date.now())?.reason, 'http: HTTP request line');
      assert.equal(sys.table.check('127.0.40.3', Date.now()), undefined);
    } finally {
      await sys.close();
    }
    const eml = fs.readdirSync(path.join(dir, 'outbox', 'sent-local'));
    assert.equal(eml.length, 1);
    assert.match(fs.readFileSync(path.join(dir, 'outbox', 'sent-local', eml[0]!), 'utf8'), /127\.0\.40\.1/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
