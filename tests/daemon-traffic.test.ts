import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { connect } from '../client/connection.js';
import { RawSocket, startDaemon, type TestDaemon } from './helpers/daemon.js';

/**
 * Traffic that is not our client, each kind from its own loopback source address: recognised
 * from the first bytes (or by the handshake timeout), closed, and reported as a violation
 * event with the right kind and source IP.
 */
let td: TestDaemon;

before(async () => {
  td = await startDaemon({ limits: { handshakeTimeoutMs: 300 } });
});

after(async () => {
  await td.stop();
});

async function sendAndExpect(ip: string, bytes: Buffer, kind: string): Promise<void> {
  const raw = await RawSocket.open(td.port, ip);
  try {
    await raw.write(bytes);
    assert.ok(await raw.closedWithin(3000), `the ${kind} connection is closed`);
    const v = await td.waitForViolation((e) => e.ip === ip);
    assert.equal(v.kind, kind);
    assert.equal(v.ip, ip);
    assert.ok(Math.abs(Date.now() - v.time) < 60000, 'the event carries the current time');
    assert.equal(raw.receivedBytes, 0, 'nothing is sent back to non-client traffic');
  } finally {
    raw.destroy();
  }
}

test('an HTTP request is closed and reported as http', { timeout: 30000 }, async () => {
  await sendAndExpect('127.0.0.40', Buffer.from('GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5\r\n\r\n'), 'http');
});

test('an HTTP request arriving one byte at a time is still recognised', { timeout: 30000 }, async () => {
  const raw = await RawSocket.open(td.port, '127.0.0.41');
  try {
    for (const b of Buffer.from('POST /login HTTP/1.1\r\n')) {
      await raw.write(Buffer.from([b]));
      if (raw.closed) break;
    }
    assert.ok(await raw.closedWithin(3000));
    const v = await td.waitForViolation((e) => e.ip === '127.0.0.41');
    assert.equal(v.kind, 'http');
  } finally {
    raw.destroy();
  }
});

test('a real TLS ClientHello is closed and reported as tls', { timeout: 30000 }, async () => {
  const err = await new Promise<Error | undefined>((resolve) => {
    const tcp = netConnect({ host: '127.0.0.1', port: td.port, localAddress: '127.0.0.42' });
    const s = tlsConnect({ socket: tcp, servername: 'localhost', rejectUnauthorized: false });
    s.once('secureConnect', () => {
      s.destroy();
      resolve(undefined);
    });
    s.once('error', (e) => resolve(e));
    s.once('close', () => resolve(new Error('closed')));
  });
  assert.ok(err, 'the TLS handshake fails');
  const v = await td.waitForViolation((e) => e.ip === '127.0.0.42');
  assert.equal(v.kind, 'tls');
});

test('an SSH banner is closed and reported as ssh', { timeout: 30000 }, async () => {
  await sendAndExpect('127.0.0.43', Buffer.from('SSH-2.0-OpenSSH_9.6\r\n'), 'ssh');
});

test('random bytes are closed and reported as garbage', { timeout: 30000 }, async () => {
  // A first byte that starts none of the recognised preambles (C for CMSP, 0x16, S, HTTP verbs).
  const bytes = Buffer.concat([Buffer.from([0x00]), randomBytes(255)]);
  await sendAndExpect('127.0.0.44', bytes, 'garbage');
});

test('our magic followed by a broken ClientHello is reported as handshake', { timeout: 30000 }, async () => {
  const bytes = Buffer.concat([Buffer.from('CMSP'), Buffer.alloc(71, 0xee)]);
  await sendAndExpect('127.0.0.45', bytes, 'handshake');
});

test('a connection that sends nothing is dropped at the handshake timeout and reported as silent', { timeout: 30000 }, async () => {
  // t0 before the connect, so it precedes the server's handshake timer: the elapsed time can only
  // exceed the 300 ms timeout (timers never fire early; load only adds), so this lower bound
  // cannot fail on a slow machine. No upper bound.
  const t0 = Date.now();
  const raw = await RawSocket.open(td.port, '127.0.0.46');
  try {
    assert.ok(await raw.closedWithin(10_000), 'dropped');
    const elapsed = Date.now() - t0;
    assert.ok(elapsed >= 200, `not before the timeout (${elapsed} ms)`);
    const v = await td.waitForViolation((e) => e.ip === '127.0.0.46');
    assert.equal(v.kind, 'silent');
  } finally {
    raw.destroy();
  }
});

test('a client that stalls half-way through the ClientHello is dropped at the handshake timeout', { timeout: 30000 }, async () => {
  const raw = await RawSocket.open(td.port, '127.0.0.47');
  try {
    await raw.write(Buffer.from('CMSP'));
    assert.ok(await raw.closedWithin(5000));
    const v = await td.waitForViolation((e) => e.ip === '127.0.0.47');
    assert.equal(v.kind, 'handshake');
  } finally {
    raw.destroy();
  }
});

test('each offender is reported once, under its own address, and a real client still works', { timeout: 30000 }, async () => {
  for (const ip of ['127.0.0.40', '127.0.0.42', '127.0.0.43', '127.0.0.44', '127.0.0.46']) {
    assert.equal(td.violations.filter((v) => v.ip === ip).length, 1, `one violation from ${ip}`);
  }
  const c = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.0.48' });
  try {
    assert.ok((await c.ping()) >= 0);
  } finally {
    await c.close();
  }
  assert.equal(td.violations.filter((v) => v.ip === '127.0.0.48').length, 0);
});
