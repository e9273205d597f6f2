import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect as netConnect } from 'node:net';
import { ClientSession, pinFingerprint } from '../protocol/client-session.js';
import { startDaemon } from './helpers/daemon.js';

/**
 * A peer that never closes its end (half-open, never reads the CLOSE) must not hold the
 * daemon's shutdown past its grace period.
 */
test('shutdown finishes at its deadline even when a peer never closes its end', { timeout: 30_000 }, async () => {
  const t = await startDaemon();
  const sock = netConnect({ host: '127.0.0.1', port: t.port, allowHalfOpen: true });
  const session = new ClientSession({ acceptServerKey: pinFingerprint(t.fingerprint) });
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.once('connect', () => {
      session.start();
      sock.write(Buffer.concat(session.takeOutput()));
    });
    sock.on('data', (d: Buffer) => {
      session.receive(d);
      for (;;) {
        const ev = session.nextEvent();
        if (ev.type === 'established') {
          sock.write(Buffer.concat(session.takeOutput()));
          resolve();
        }
        if (ev.type !== 'established') break;
      }
    });
  });
  while (t.daemon.pendingHandshakes > 0) await new Promise((r) => setTimeout(r, 10));
  sock.pause(); // never read again, never end our side

  // stop() returning at all is the point (the test's own timeout bounds the run); no timing assertion.
  await t.stop(300);
  assert.equal(t.daemon.connectionCount, 0, 'the server let go of the half-open connection');
  sock.destroy();
});
