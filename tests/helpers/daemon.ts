import { mkdtemp, rm } from 'node:fs/promises';
import { capturingRandomness } from './ephemeral.js';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configSchema, type Limits } from '../../daemon/main/config.js';
import { nullLogger, type Logger } from '../../daemon/common/log.js';
import { Daemon } from '../../daemon/edge/server.js';
import { ViolationBus, type ViolationEvent } from '../../daemon/bans/violations.js';
import { ClientSession, pinFingerprint, type ClientEvent } from '../../protocol/client-session.js';
import { SERVER_HELLO_LEN } from '../../protocol/constants.js';
import { parseServerHello } from '../../protocol/handshake-messages.js';
import { deriveSessionSecrets } from '../../protocol/key-schedule.js';
import type { Message } from '../../protocol/messages.js';
import { RecordSealer } from '../../protocol/record-layer.js';
import { testIdentity } from './pair.js';

/**
 * A daemon on 127.0.0.1:0 for tests over real loopback sockets, and a raw client that does the
 * handshake by hand so a test can forge, replay, reorder or cut records on the wire.
 */
export interface TestDaemon {
  readonly daemon: Daemon;
  readonly port: number;
  readonly fingerprint: string;
  readonly dataDir: string;
  /** Every violation the daemon reported, in order. */
  readonly violations: ViolationEvent[];
  waitForViolation(pred: (e: ViolationEvent) => boolean, timeoutMs?: number): Promise<ViolationEvent>;
  stop(graceMs?: number): Promise<void>;
}

export interface TestDaemonOptions {
  limits?: Partial<Limits>;
  rekeyAfterRecords?: number;
  /** Defaults to a silent logger. */
  logger?: Logger;
}

export async function startDaemon(opts: TestDaemonOptions = {}): Promise<TestDaemon> {
  const dataDir = await mkdtemp(join(tmpdir(), 'commusic-test-'));
  const config = configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'error', limits: opts.limits ?? {}, diag: { echoStream: true } });
  const identity = testIdentity();
  const bus = new ViolationBus();
  const violations: ViolationEvent[] = [];
  const waiters = new Set<{ pred: (e: ViolationEvent) => boolean; resolve: (e: ViolationEvent) => void }>();
  bus.subscribe((e) => {
    violations.push(e);
    for (const w of waiters) {
      if (w.pred(e)) {
        waiters.delete(w);
        w.resolve(e);
      }
    }
  });
  const daemon = await Daemon.start({
    config,
    identity,
    logger: opts.logger ?? nullLogger(),
    violations: bus,
    ...(opts.rekeyAfterRecords ? { rekeyAfterRecords: opts.rekeyAfterRecords } : {}),
  });
  let stopped: Promise<void> | undefined;
  return {
    daemon,
    port: daemon.address().port,
    fingerprint: identity.fingerprint,
    dataDir,
    violations,
    waitForViolation(pred, timeoutMs = 5000) {
      const seen = violations.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const w = {
          pred,
          resolve: (e: ViolationEvent) => {
            clearTimeout(timer);
            resolve(e);
          },
        };
        const timer = setTimeout(() => {
          waiters.delete(w);
          reject(new Error(`no matching violation within ${timeoutMs} ms; saw ${JSON.stringify(violations)}`));
        }, timeoutMs);
        waiters.add(w);
      });
    },
    stop(graceMs = 0) {
      stopped ??= (async () => {
        await daemon.stop(graceMs);
        await rm(dataDir, { recursive: true, force: true });
      })();
      return stopped;
    },
  };
}

/** Polls until `cond` holds; rejects after `timeoutMs`. */
export async function waitUntil(cond: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * A plain TCP socket from a chosen loopback source address that records everything it
 * receives and when it closed.
 */
export class RawSocket {
  readonly received: Buffer[] = [];
  receivedBytes = 0;
  closed = false;
  ended = false;
  error: Error | undefined;
  private readonly closedPromise: Promise<void>;
  private dataWaiters: (() => void)[] = [];

  private constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.received.push(d);
      this.receivedBytes += d.length;
      const ws = this.dataWaiters;
      this.dataWaiters = [];
      for (const w of ws) w();
    });
    socket.on('end', () => (this.ended = true));
    socket.on('error', (e) => (this.error = e));
    this.closedPromise = new Promise((r) =>
      socket.once('close', () => {
        this.closed = true;
        const ws = this.dataWaiters;
        this.dataWaiters = [];
        for (const w of ws) w();
        r();
      }),
    );
  }

  static open(port: number, localAddress = '127.0.0.1'): Promise<RawSocket> {
    return new Promise((resolve, reject) => {
      const s = netConnect({ host: '127.0.0.1', port, localAddress, noDelay: true });
      const raw = new RawSocket(s);
      s.once('connect', () => resolve(raw));
      s.once('error', reject);
    });
  }

  write(data: Uint8Array): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve();
      this.socket.write(data, () => resolve());
    });
  }

  /** All bytes received so far, and forgets them. */
  take(): Buffer {
    const b = Buffer.concat(this.received);
    this.received.length = 0;
    return b;
  }

  /** Resolves true when the peer closed within `timeoutMs`. */
  async closedWithin(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const t = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), timeoutMs)));
    const result = await Promise.race([this.closedPromise.then(() => true), t]);
    clearTimeout(timer);
    return result;
  }

  /** Resolves when new data arrived or the socket closed, or after `timeoutMs`. */
  waitData(timeoutMs: number): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, timeoutMs);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.dataWaiters.push(done);
    });
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/**
 * A handshake done by hand over a RawSocket. The client's ephemeral key is captured so the
 * test can derive the session keys itself and seal records the ClientSession would never
 * produce (a DATA record in place of the Finished). It offers version 1 only unless
 * `maxVersion` says otherwise, so a forged DATA record is one bare message (PROTOCOL.md 6).
 */
export interface RawSession {
  readonly raw: RawSocket;
  readonly session: ClientSession;
  /** The client Finished record, sent or held back. */
  readonly finishedRecord: Buffer;
  /** A sealer for the client-to-server direction positioned where the Finished was sealed. */
  readonly forge: RecordSealer;
  /** The client Finished value (the FINISHED record's plaintext), for records forged with `forge`. */
  readonly clientFinished: Buffer;
  /** Seals one message with the session and returns the record bytes without sending them. */
  seal(m: Message): Buffer;
  /** Every byte the server sent after the handshake, as fed to the session. */
  readonly wire: Buffer[];
  /** Feeds everything received so far to the session; returns the events up to need-data. */
  events(): ClientEvent[];
}

export async function rawHandshake(
  port: number,
  fingerprint: string,
  opts: { localAddress?: string; sendFinished?: boolean; rekeyAfterRecords?: number; timeoutMs?: number; maxVersion?: number } = {},
): Promise<RawSession> {
  const raw = await RawSocket.open(port, opts.localAddress);
  const cap = capturingRandomness();
  const session = new ClientSession({
    acceptServerKey: pinFingerprint(fingerprint),
    randomness: cap.randomness,
    ...(opts.rekeyAfterRecords ? { rekeyAfterRecords: opts.rekeyAfterRecords } : {}),
    // Version 1 unless asked: records forged with `forge` carry one bare message each.
    maxVersion: opts.maxVersion ?? 1,
  });
  session.start();
  const clientHello = Buffer.concat(session.takeOutput());
  await raw.write(clientHello);
  const deadline = Date.now() + (opts.timeoutMs ?? 5000);
  let serverBytes = Buffer.alloc(0);
  let ev: ClientEvent = { type: 'need-data' };
  while (ev.type === 'need-data') {
    if (raw.closed) throw new Error('server closed the connection during the handshake');
    if (Date.now() > deadline) throw new Error('handshake timed out');
    await raw.waitData(100);
    const got = raw.take();
    if (got.length === 0) continue;
    serverBytes = Buffer.concat([serverBytes, got]);
    session.receive(got);
    ev = session.nextEvent();
  }
  if (ev.type !== 'established') throw new Error(`handshake failed: ${JSON.stringify(ev)}`);
  const finishedRecord = Buffer.concat(session.takeOutput());
  const sh = parseServerHello(serverBytes.subarray(0, SERVER_HELLO_LEN));
  const shared = cap.shared(sh.share);
  if (!shared) throw new Error('server share is invalid');
  const secrets = deriveSessionSecrets(shared, clientHello, sh.signed, sh.signature);
  const forge = new RecordSealer(secrets.clientToServer, opts.rekeyAfterRecords);
  if (opts.sendFinished ?? true) await raw.write(finishedRecord);
  const wire: Buffer[] = [];
  return {
    raw,
    session,
    finishedRecord,
    forge,
    clientFinished: secrets.clientFinished,
    wire,
    seal(m) {
      session.sendMessage(m);
      return Buffer.concat(session.takeOutput());
    },
    events() {
      const got = raw.take();
      if (got.length > 0) {
        wire.push(got);
        session.receive(got);
      }
      const out: ClientEvent[] = [];
      for (let i = 0; i < 100000; i++) {
        const e = session.nextEvent();
        if (e.type === 'need-data') break;
        out.push(e);
        if (e.type === 'error' || e.type === 'closed') break;
      }
      return out;
    },
  };
}
