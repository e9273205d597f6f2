/**
 * The server under test for bench/channel.ts, run in its own process (forked with --expose-gc)
 * so that it and the load generator each get a core. `node dist/bench/server-child.js ours|tls`:
 * - ours: the Daemon on 127.0.0.1:0 with a fresh RSA-2048 identity and limits raised for the bench;
 * - tls:  Node's TLS 1.3 server with a self-signed RSA-2048 certificate (node-forge), echoing
 *         length-prefixed messages (u32 BE length, body) back to the sender, each on its own.
 * It talks to the parent over IPC: `ready` once listening, then answers `cpu`, `count`, `mem`
 * requests and exits on `exit` or when the parent goes away.
 */
import { constants as cryptoConstants, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import forge from 'node-forge';
import { generateIdentity } from '../crypto/identity.js';
import { loadConfig } from '../daemon/main/config.js';
import { Daemon } from '../daemon/edge/server.js';

export type ChildKind = 'ours' | 'tls';

/**
 * The runtime settings every server child gets, ours and the baselines alike: those of
 * deploy/commusicd.service and deploy/Containerfile (V8's young generation at most 2 x 2 MiB,
 * two malloc arenas), so the memory figures measure the server as it is shipped.
 */
export const SERVER_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=2'];
export const SERVER_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2' };

export type ToChild = { type: 'cpu' | 'count' | 'mem' | 'exit'; seq: number };

export interface MemReport {
  rss: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

export type FromChild =
  | { type: 'ready'; port: number; fingerprint?: string; certPem?: string }
  | { type: 'reply'; seq: number; cpuMicros?: number; count?: number; mem?: MemReport };

/** A self-signed RSA-2048 certificate for 127.0.0.1; the key pair comes from OpenSSL, forge only builds the X.509. */
export function selfSignedRsa2048(): { keyPem: string; certPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicExponent: 65537,
    privateKeyEncoding: { type: 'pkcs1', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey);
  cert.serialNumber = '01';
  const now = new Date();
  cert.validity.notBefore = new Date(now.getTime() - 60_000);
  cert.validity.notAfter = new Date(now.getTime() + 86_400_000);
  const attrs = [{ name: 'commonName', value: 'commusic-bench' }];
  cert.setSubject(attrs);
  cert.setIssuer(attrs);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true },
    { name: 'keyUsage', digitalSignature: true, keyCertSign: true },
    { name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] },
  ]);
  cert.sign(forge.pki.privateKeyFromPem(privateKey), forge.md.sha256.create());
  return { keyPem: privateKey, certPem: forge.pki.certificateToPem(cert) };
}

/**
 * Echo of length-prefixed messages (u32 BE length, body), parsed frame by frame and answered
 * message by message, as our server answers each request (issue 13: a fair baseline): a small
 * frame is gathered whole and written back with one write of its own (one TLS record per
 * answer); a frame over 64 KiB is streamed back piece by piece as it arrives, as our
 * server streams a download in chunks, instead of being buffered whole.
 */
export const STREAM_FRAME_FROM = 65536;

export function framedEcho(socket: TLSSocket): void {
  let headerBytes = 0;
  let header = 0;
  let bodyLeft = 0;
  let streaming = false;
  let frame: Buffer[] = [];
  socket.setNoDelay(true);
  const headerOf = (n: number) => {
    const h = Buffer.allocUnsafe(4);
    h.writeUInt32BE(n);
    return h;
  };
  socket.on('data', (d: Buffer) => {
    let i = 0;
    while (i < d.length) {
      if (bodyLeft > 0) {
        const take = Math.min(bodyLeft, d.length - i);
        const piece = d.subarray(i, i + take);
        bodyLeft -= take;
        i += take;
        if (streaming) socket.write(piece);
        else {
          frame.push(piece);
          if (bodyLeft === 0) {
            socket.write(Buffer.concat(frame));
            frame = [];
          }
        }
        continue;
      }
      header = ((header << 8) | d[i]!) >>> 0;
      headerBytes++;
      i++;
      if (headerBytes === 4) {
        bodyLeft = header;
        streaming = header > STREAM_FRAME_FROM;
        if (streaming || header === 0) socket.write(headerOf(header));
        else frame = [headerOf(header)];
        header = 0;
        headerBytes = 0;
      }
    }
  });
  socket.on('end', () => socket.end());
  socket.on('error', () => socket.destroy());
}

async function main(): Promise<void> {
  const kind = process.argv[2] as ChildKind;
  const send = (m: FromChild) => process.send!(m);
  let established: () => number;
  let stop: () => Promise<void>;
  let cleanup = () => {};

  if (kind === 'ours') {
    const dataDir = mkdtempSync(join(tmpdir(), 'commusic-bench-'));
    cleanup = () => rmSync(dataDir, { recursive: true, force: true });
    const config = loadConfig({ flags: { dataDir, listen: '127.0.0.1:0' }, env: {} });
    config.diag.echoStream = true; // the stream bench uses diag.echoStream, off by default
    config.limits.maxConnections = 100_000;
    config.limits.maxPendingHandshakes = 100_000;
    config.limits.maxPendingHandshakesPerIp = 10_000;
    // One load generator on one address: the per-source and pre-login limits (issue 11) would
    // otherwise cap the concurrency and the idle connections this bench measures.
    config.limits.maxPendingHandshakesPerPrefix = 100_000;
    config.limits.earlyDropStart = 100_000;
    config.limits.maxPreLogin = 100_000;
    config.limits.maxPreLoginPerIp = 100_000;
    config.limits.maxPreLoginPerPrefix = 100_000;
    config.limits.loginTimeoutMs = 3_600_000;
    const identity = generateIdentity();
    const daemon = await Daemon.start({ config, identity });
    established = () => daemon.connectionCount - daemon.pendingHandshakes;
    stop = () => daemon.stop(0);
    send({ type: 'ready', port: daemon.address().port, fingerprint: identity.fingerprint });
  } else if (kind === 'tls') {
    const { keyPem, certPem } = selfSignedRsa2048();
    const live = new Set<TLSSocket>();
    // No session tickets: the clients never resume, and every handshake is a full one.
    const server: TlsServer = createTlsServer({ key: keyPem, cert: certPem, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', secureOptions: cryptoConstants.SSL_OP_NO_TICKET }, (s) => {
      live.add(s);
      s.once('close', () => live.delete(s));
      framedEcho(s);
    });
    server.on('tlsClientError', () => {});
    await new Promise<void>((r) => server.listen({ host: '127.0.0.1', port: 0, backlog: 4096 }, () => r()));
    established = () => live.size;
    stop = () =>
      new Promise<void>((r) => {
        for (const s of live) s.destroy();
        server.close(() => r());
      });
    const a = server.address();
    send({ type: 'ready', port: typeof a === 'object' && a ? a.port : 0, certPem });
  } else {
    throw new Error(`unknown server kind ${String(kind)}`);
  }

  const gc = (globalThis as { gc?: () => void }).gc;
  process.on('message', (m: ToChild) => {
    switch (m.type) {
      case 'cpu': {
        const u = process.cpuUsage();
        return send({ type: 'reply', seq: m.seq, cpuMicros: u.user + u.system });
      }
      case 'count':
        return send({ type: 'reply', seq: m.seq, count: established() });
      case 'mem': {
        for (let k = 0; k < 3; k++) gc?.();
        const u = process.memoryUsage();
        return send({ type: 'reply', seq: m.seq, mem: { rss: u.rss, heapUsed: u.heapUsed, external: u.external, arrayBuffers: u.arrayBuffers } });
      }
      case 'exit':
        void stop().finally(() => {
          cleanup();
          send({ type: 'reply', seq: m.seq });
          process.exit(0);
        });
        return;
    }
  });
  // The parent died or closed the channel: do not linger.
  process.on('disconnect', () => {
    cleanup();
    process.exit(0);
  });
}

// Only when run as the child itself (bench/h2-child.ts imports the certificate helper).
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((e: unknown) => {
    console.error('bench server child failed:', e);
    process.exit(1);
  });
}
