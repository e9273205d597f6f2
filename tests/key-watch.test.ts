// Must-show 3 (second half): changing the key file while the daemon runs raises a security event
// within seconds: content, mode, owner, replacement, removal; the daemon's own rotation does not.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, chownSync, renameSync, unlinkSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { watchKeyFile, type SecurityEvent, type KeyFileEventKind } from '../crypto/key-watch.js';
import { openStorage } from '../storage/server/storage.js';
import { rotateMaster } from '../storage/server/key-rotation.js';
import { tmpDir } from './store-helpers.js';

function collector() {
  const events: SecurityEvent[] = [];
  const waiters: Array<() => void> = [];
  return {
    events,
    on: (e: SecurityEvent) => {
      events.push(e);
      for (const w of waiters.splice(0)) w();
    },
    async waitFor(kind: KeyFileEventKind, withinMs = 5000): Promise<{ event: SecurityEvent; ms: number }> {
      const start = Date.now();
      for (;;) {
        const e = events.find((x) => x.kind === kind);
        if (e) return { event: e, ms: Date.now() - start };
        const left = withinMs - (Date.now() - start);
        if (left <= 0) throw new Error(`no ${kind} event within ${withinMs} ms; got ${JSON.stringify(events)}`);
        await new Promise<void>((r) => {
          const t = setTimeout(r, Math.min(left, 100));
          waiters.push(() => { clearTimeout(t); r(); });
        });
      }
    },
  };
}

test('every kind of key file change raises an event within seconds', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const st = await openStorage({ dataDir: dir, create: true });
  const keyFile = st.keyFilePath;
  st.close();
  const c = collector();
  const w = watchKeyFile(keyFile, c.on, { pollMs: 500 });
  t.after(() => w.close());
  const orig = readFileSync(keyFile);

  const flipped = Buffer.from(orig);
  flipped[10]! ^= 1;
  writeFileSync(keyFile, flipped);
  const changed = await c.waitFor('key-file-changed');
  assert.match(changed.event.detail, /content of key file/);
  assert.equal(changed.event.path, keyFile);
  assert.ok(changed.event.time instanceof Date);

  c.events.length = 0;
  chmodSync(keyFile, 0o644);
  assert.match((await c.waitFor('key-file-mode')).event.detail, /0600 -> 0644/);

  if (process.getuid?.() === 0) {
    c.events.length = 0;
    chownSync(keyFile, 1, 1);
    assert.match((await c.waitFor('key-file-mode')).event.detail, /owner .* 0:0 -> 1:1/);
    chownSync(keyFile, 0, 0);
  }

  c.events.length = 0;
  writeFileSync(join(dir, 'keys', 'evil.key'), orig, { mode: 0o600 });
  renameSync(join(dir, 'keys', 'evil.key'), keyFile);
  assert.match((await c.waitFor('key-file-replaced')).event.detail, /replaced/);

  c.events.length = 0;
  chmodSync(join(dir, 'keys'), 0o755);
  const dirEv = await c.waitFor('key-file-mode');
  assert.equal(dirEv.event.path, join(dir, 'keys'));
  chmodSync(join(dir, 'keys'), 0o700);

  c.events.length = 0;
  unlinkSync(keyFile);
  const removed = await c.waitFor('key-file-removed');
  assert.equal(removed.event.path, keyFile);
});

test("the daemon's own master rotation inside expectChange raises no event; a later change does", async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const st = await openStorage({ dataDir: dir, create: true });
  t.after(() => st.close());
  const c = collector();
  const w = watchKeyFile(st.keyFilePath, c.on, { pollMs: 200 });
  t.after(() => w.close());
  await w.expectChange(() => rotateMaster(st));
  assert.equal(c.events.length, 0);
  // Structural, no sleep: every check compares against the baseline taken after the rotation.
  // Had the rotation been missed by the rebaseline, the check that reports this chmod would
  // report the rotation too (as key-file-changed or key-file-replaced), in the same batch or earlier.
  chmodSync(st.keyFilePath, 0o640);
  await c.waitFor('key-file-mode');
  assert.deepEqual(c.events.map((e) => e.kind), ['key-file-mode'], 'only the later change raised an event');
});
