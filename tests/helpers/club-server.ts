import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configSchema } from '../../daemon/main/config.js';
import { registerClubCommands, type ClubServices } from '../../daemon/club/club-commands.js';
import { CommandError } from '../../daemon/edge/command-errors.js';
import { Dispatcher, type CommandContext } from '../../daemon/edge/dispatcher.js';
import { nullLogger } from '../../daemon/common/log.js';
import { Daemon } from '../../daemon/edge/server.js';
import { ViolationBus, type ViolationEvent } from '../../daemon/bans/violations.js';
import { connect, type Connection } from '../../client/connection.js';
import { createClub } from '../../storage/server/provisioning.js';
import { openStorage, type Storage } from '../../storage/server/storage.js';
import { testIdentity } from './pair.js';

/**
 * A real Storage (temporary data folder) with the club commands registered on a dispatcher.
 * `session()` gives an in-process caller with its own connection state (fast, for table-driven
 * tests); `listen()` starts a Daemon on 127.0.0.1:0 with the same dispatcher for TCP tests.
 */
export interface ClubTestEnv {
  readonly storage: Storage;
  readonly dispatcher: Dispatcher;
  readonly services: ClubServices;
  readonly violations: ViolationEvent[];
  readonly dataDir: string;
  newClub(admin?: string, password?: string): Promise<string>;
  session(ip?: string): InProcessSession;
  listen(): Promise<{ port: number; fingerprint: string; daemon: Daemon; connect(localAddress?: string): Promise<Connection> }>;
  close(): Promise<void>;
}

export interface InProcessSession {
  call(command: string, payload?: unknown, upload?: AsyncIterable<Uint8Array>): Promise<{ payload: any; download?: AsyncIterable<Uint8Array> }>;
  /** Resolves to the error code, or 'ok'. */
  code(command: string, payload?: unknown): Promise<string>;
}

export const ADMIN_PASSWORD = 'Admin-Password-123';

export async function clubEnv(o: { idleTimeoutMs?: number; now?: () => number } = {}): Promise<ClubTestEnv> {
  const dataDir = await mkdtemp(join(tmpdir(), 'commusic-club-'));
  const storage = await openStorage({ dataDir, create: true, scryptLog2N: 10 });
  storage.identity = testIdentity();
  const bus = new ViolationBus();
  const violations: ViolationEvent[] = [];
  bus.subscribe((e) => violations.push(e));
  const services: ClubServices = { storage, violations: bus, identity: testIdentity(), passwordLog2N: 10, ...(o.idleTimeoutMs ? { idleTimeoutMs: o.idleTimeoutMs } : {}), ...(o.now ? { now: o.now } : {}) };
  const dispatcher = new Dispatcher();
  registerClubCommands(dispatcher, services);
  let daemon: Daemon | undefined;
  let connId = 1000;
  return {
    storage,
    dispatcher,
    services,
    violations,
    dataDir,
    async newClub(admin = 'admin', password = ADMIN_PASSWORD) {
      return (await createClub(storage, { name: 'MV Test', adminUser: admin, adminPassword: password })).id;
    },
    session(ip = '127.0.0.1') {
      const session = new Map<string, unknown>();
      const conn = { id: connId++, ip, port: 40000 };
      const call = async (command: string, payload: unknown = {}, upload?: AsyncIterable<Uint8Array>) => {
        const prepared = dispatcher.prepare(command, payload, upload !== undefined);
        const ctx: CommandContext = { conn, signal: new AbortController().signal, session, ...(upload ? { upload } : {}) };
        return prepared.spec.handler(prepared.payload, ctx) as Promise<{ payload: any; download?: AsyncIterable<Uint8Array> }>;
      };
      return {
        call,
        async code(command: string, payload: unknown = {}) {
          try {
            await call(command, payload);
            return 'ok';
          } catch (e) {
            if (e instanceof CommandError) return e.code;
            throw e;
          }
        },
      };
    },
    async listen() {
      const identity = testIdentity();
      daemon ??= await Daemon.start({ config: configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'error', diag: { echoStream: true } }), identity, logger: nullLogger(), violations: bus, dispatcher });
      const port = daemon.address().port;
      return { port, fingerprint: identity.fingerprint, daemon, connect: (localAddress?: string) => connect({ host: '127.0.0.1', port, fingerprint: identity.fingerprint, ...(localAddress ? { localAddress } : {}) }) };
    },
    async close() {
      await daemon?.stop(0);
      storage.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
