/**
 * Issue 14, "Security of the new paths": the peer channel (cluster/peer-channel.ts) over the
 * daemon's own protocol and the peer commands (daemon/cluster/peer-commands.ts), on a real
 * listener. No etcd is needed: membership is a fixed answer here (the daemon asks its ClusterNode).
 *
 * - a member with the master key moves a document file both ways, verified;
 * - a caller with a wrong master key, and a caller that is not a current member, are refused,
 *   and each attempt is a `login` violation;
 * - a club user's session calling a peer command is refused and it is a `rights` violation; a
 *   peer session calling a club command is refused;
 * - a pushed object whose bytes do not match the announced SHA-256 or size is refused and
 *   nothing is installed.
 */
import assert from 'node:assert/strict';
import { randomBytes, createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connect, type Connection } from '../client/connection.js';
import { RemoteError } from '../client/errors.js';
import { derivePeerAuthKey } from '../crypto/cluster-seal.js';
import { registerDocumentPeers } from '../cluster/doc-replica.js';
import { ClusterError } from '../cluster/errors.js';
import { peerProof } from '../cluster/peer-auth.js';
import { PeerChannel } from '../cluster/peer-channel.js';
import { registerPeerCommands } from '../daemon/cluster/peer-commands.js';
import { clubDir, DOCS_DIR } from '../storage/club/club-store.js';
import { ADMIN_PASSWORD, clubEnv, type ClubTestEnv } from './helpers/club-server.js';

const SERVER = 'member-b';
const CALLER = 'member-a';

async function collect(chunks: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of chunks) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

describe('peer channel between members', () => {
  let env: ClubTestEnv;
  let port: number;
  let fingerprint: string;
  let club: string;
  let docsDir: string;
  let server: PeerChannel;

  const caller = (o: { nodeId?: string; masterKey?: Uint8Array } = {}): PeerChannel =>
    new PeerChannel({
      nodeId: o.nodeId ?? CALLER,
      masterKey: o.masterKey ?? env.storage.master.key,
      fingerprints: () => [fingerprint],
      resolve: (id) => (id === SERVER ? `127.0.0.1:${port}` : undefined),
      isMember: () => false,
      limits: { minDeadlineMs: 20_000 },
    });

  /** A raw session that passed peer.auth as CALLER (to send what a PeerChannel never would). */
  const peerSession = async (): Promise<Connection> => {
    const conn = await connect({ host: '127.0.0.1', port, fingerprint });
    const proof = peerProof(derivePeerAuthKey(env.storage.master.key), 'client', CALLER, SERVER, conn.channelBinding!);
    await conn.request('peer.auth', { node: CALLER, to: SERVER, proof });
    return conn;
  };

  before(async () => {
    env = await clubEnv();
    club = await env.newClub();
    docsDir = join(clubDir(env.storage.dataDir, club), DOCS_DIR);
    mkdirSync(docsDir, { recursive: true });
    server = new PeerChannel({ nodeId: SERVER, masterKey: env.storage.master.key, fingerprints: () => [fingerprint], resolve: () => undefined, isMember: (id) => id === CALLER });
    registerDocumentPeers(server, env.storage);
    registerPeerCommands(env.dispatcher, () => server, env.services.violations);
    const l = await env.listen();
    port = l.port;
    fingerprint = l.fingerprint;
  });
  after(async () => {
    await env?.close();
  });

  test('a member pushes and pulls a document file; the bytes arrive verified', async () => {
    const ch = caller();
    const bytes = randomBytes(300_000); // several chunks and more than one flow-control window
    const name = `${randomBytes(16).toString('hex')}.cmdoc`;
    await ch.push(SERVER, { kind: 'document', club, name }, { size: bytes.length, sha256: sha(bytes), chunks: (async function* () {
      for (let i = 0; i < bytes.length; i += 50_000) yield bytes.subarray(i, i + 50_000);
    })() });
    assert.deepEqual(readFileSync(join(docsDir, name)), bytes);
    const pulled = await ch.pull(SERVER, { kind: 'document', club, name });
    assert.ok(pulled);
    assert.equal(pulled.size, bytes.length);
    assert.deepEqual(await collect(pulled.chunks), bytes);
    assert.equal(await ch.pull(SERVER, { kind: 'document', club, name: `${'0'.repeat(32)}.cmdoc` }), undefined);
  });

  test('transfers beyond the outgoing bound wait for a slot; beyond the incoming bound the member answers BUSY', async () => {
    const bytes = randomBytes(200_000);
    const name = `${randomBytes(16).toString('hex')}.cmdoc`;
    const one = new PeerChannel({ nodeId: CALLER, masterKey: env.storage.master.key, fingerprints: () => [fingerprint], resolve: () => `127.0.0.1:${port}`, isMember: () => false, limits: { maxOutgoing: 1, minDeadlineMs: 20_000 } });
    await one.push(SERVER, { kind: 'document', club, name }, { size: bytes.length, sha256: sha(bytes), chunks: (async function* () { yield bytes; })() });
    // three pulls through one slot: each waits for the one before to end its stream
    const all = await Promise.all([0, 1, 2].map(async () => {
      const p = await one.pull(SERVER, { kind: 'document', club, name });
      return collect(p!.chunks);
    }));
    for (const b of all) assert.deepEqual(b, bytes);
    // The answering side holds a slot while a pulled stream is open: past maxIncoming, BUSY.
    const held: Array<{ chunks: AsyncIterable<Uint8Array> }> = [];
    for (let i = 0; i < server.limits.maxIncoming; i++) held.push((await server.servePull({ kind: 'document', club, name }))!);
    await assert.rejects(server.servePull({ kind: 'document', club, name }), (e: unknown) => e instanceof ClusterError && e.code === 'PEER_UNAVAILABLE');
    for (const h of held) await collect(h.chunks);
    assert.ok(await server.servePull({ kind: 'document', club, name }).then((p) => collect(p!.chunks)));
    // Streams closed before their first chunk (the caller gave up, the request was aborted) give
    // their slots back too: a generator's finally never ran for them, and each leaked a slot.
    for (let round = 0; round < 3; round++) {
      const unread: Array<{ chunks: AsyncIterable<Uint8Array> }> = [];
      for (let i = 0; i < server.limits.maxIncoming; i++) unread.push((await server.servePull({ kind: 'document', club, name }))!);
      for (const u of unread) await u.chunks[Symbol.asyncIterator]().return?.();
    }
    assert.ok(await server.servePull({ kind: 'document', club, name }).then((p) => collect(p!.chunks)), 'slots leaked by streams closed unread');
  });

  test('a caller with a wrong master key is refused, and it counts as a failed login', async () => {
    const before = env.violations.filter((v) => v.kind === 'login').length;
    const ch = caller({ masterKey: randomBytes(32) });
    await assert.rejects(ch.pull(SERVER, { kind: 'document', club, name: `${'1'.repeat(32)}.cmdoc` }), (e: unknown) => e instanceof ClusterError && e.code === 'PEER_REFUSED');
    assert.equal(env.violations.filter((v) => v.kind === 'login' && v.command === 'peer.auth').length, before + 1);
  });

  test('a caller that is not a current member is refused, with the right key too; that refusal is no violation (a joining member must not get its address banned)', async () => {
    const before = env.violations.filter((v) => v.kind === 'login').length;
    const ch = caller({ nodeId: 'member-x' });
    for (let i = 0; i < 6; i++) {
      await assert.rejects(ch.pull(SERVER, { kind: 'document', club, name: `${'1'.repeat(32)}.cmdoc` }), (e: unknown) => e instanceof ClusterError && e.code === 'PEER_UNAVAILABLE');
    }
    assert.equal(env.violations.filter((v) => v.kind === 'login' && v.command === 'peer.auth').length, before, 'a member with the right key but no membership yet was counted');
  });

  test('a proof made on another session is refused (bound to the session)', async () => {
    const other = await connect({ host: '127.0.0.1', port, fingerprint });
    const conn = await connect({ host: '127.0.0.1', port, fingerprint });
    try {
      const proof = peerProof(derivePeerAuthKey(env.storage.master.key), 'client', CALLER, SERVER, other.channelBinding!);
      await assert.rejects(conn.request('peer.auth', { node: CALLER, to: SERVER, proof }), (e: unknown) => e instanceof RemoteError && e.code === 'UNAUTHENTICATED');
    } finally {
      await other.close();
      await conn.close();
    }
  });

  test('a club user session may not use peer commands (a rights violation); a peer session may not use club commands', async () => {
    const conn = await connect({ host: '127.0.0.1', port, fingerprint });
    try {
      await conn.request('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
      const before = env.violations.filter((v) => v.kind === 'rights').length;
      await assert.rejects(conn.request('peer.pull', { kind: 'document', club, name: `${'2'.repeat(32)}.cmdoc` }), (e: unknown) => e instanceof RemoteError && e.code === 'FORBIDDEN');
      const proof = peerProof(derivePeerAuthKey(env.storage.master.key), 'client', CALLER, SERVER, conn.channelBinding!);
      await assert.rejects(conn.request('peer.auth', { node: CALLER, to: SERVER, proof }), (e: unknown) => e instanceof RemoteError && e.code === 'FORBIDDEN');
      assert.equal(env.violations.filter((v) => v.kind === 'rights').length, before + 2);
    } finally {
      await conn.close();
    }
    // Not logged in at all: refused the same way.
    const anon = await connect({ host: '127.0.0.1', port, fingerprint });
    try {
      await assert.rejects(anon.request('peer.push', { kind: 'document', club, name: `${'3'.repeat(32)}.cmdoc`, size: 1, sha256: sha(Buffer.of(1)) }, { upload: Buffer.of(1) }), (e: unknown) => e instanceof RemoteError && e.code === 'FORBIDDEN');
    } finally {
      await anon.close();
    }
    assert.equal(existsSync(join(docsDir, `${'3'.repeat(32)}.cmdoc`)), false);
    const peer = await peerSession();
    try {
      await assert.rejects(peer.request('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD }), (e: unknown) => e instanceof RemoteError && e.code === 'FORBIDDEN');
    } finally {
      await peer.close();
    }
  });

  test('a pushed object whose bytes do not match its SHA-256 or size is refused and not installed', async () => {
    const bytes = randomBytes(100_000);
    const tampered = Buffer.from(bytes);
    tampered[5000] = tampered[5000]! ^ 0xff;
    const cases = [
      { what: 'sha mismatch', announce: { size: bytes.length, sha256: sha(bytes) }, send: tampered },
      { what: 'short', announce: { size: bytes.length, sha256: sha(bytes) }, send: bytes.subarray(0, 99_000) },
      { what: 'long', announce: { size: bytes.length, sha256: sha(bytes) }, send: Buffer.concat([bytes, Buffer.of(0)]) },
    ];
    for (const c of cases) {
      const name = `${randomBytes(16).toString('hex')}.cmdoc`;
      const conn = await peerSession();
      try {
        await assert.rejects(conn.request('peer.push', { kind: 'document', club, name, ...c.announce }, { upload: c.send }), (e: unknown) => e instanceof RemoteError && e.code === 'BAD_REQUEST', c.what);
      } finally {
        await conn.close();
      }
      assert.equal(existsSync(join(docsDir, name)), false, `${c.what}: installed`);
      assert.deepEqual(readdirSync(docsDir).filter((f) => f.includes(name)), [], `${c.what}: a temporary file left`);
    }
    // A name that is not a document file name is refused before any byte is written.
    const conn = await peerSession();
    try {
      await assert.rejects(conn.request('peer.push', { kind: 'document', club, name: 'x', size: 1, sha256: sha(Buffer.of(1)) }, { upload: Buffer.of(1) }), (e: unknown) => e instanceof RemoteError && e.code === 'BAD_REQUEST');
    } finally {
      await conn.close();
    }
  });
});
