import { existsSync, mkdirSync, readdirSync, rmdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { assertSafeDataDir } from './folder-safety.js';
import { openIdentityHolder } from './identity-keys.js';
import { ensurePublicKeyFile, generateIdentity, loadIdentity, saveIdentity, type IdentityKey } from '../../crypto/identity.js';
import { passwordHashQueue } from '../../crypto/password.js';
import type { BanTable } from '../../storage/bans/ban-store.js';
import { openBanSystem, type BanSystem } from '../bans/ban-system.js';
import { ConfigError, dataPaths, loadConfig, splitHostPort, type Config, type ConfigSources } from './config.js';
import { ControlServer } from '../ops/control-socket.js';
import { createLogger, reopenLogFiles, type Logger } from '../common/log.js';
import { notifyReady } from './sd-notify.js';
import { buildOperations } from '../ops/ops.js';
import { Daemon, VERSION } from '../edge/server.js';
import { Dispatcher } from '../edge/dispatcher.js';
import { registerClubCommands, type ClubServices } from '../club/club-commands.js';
import { BackupService } from '../backup/backup-service.js';
import type { SnapshotPool } from '../../storage/backup/snapshot-pool.js';
import { startClusterBackups } from '../backup/cluster-backups.js';
import { registerBackupCommands } from '../backup/backup-commands.js';
import type { BackupOpsContext } from '../backup/backup-ops.js';
import { startHealthIfEnabled, type HealthEndpoint } from '../monitoring/health-setup.js';
import { Reloader } from './reload.js';
import { registerStatusOps, type StatusContext } from '../monitoring/status-ops.js';
import { ViolationBus } from '../bans/violations.js';
import { openStorage, type Storage } from '../../storage/server/storage.js';
import { planStoreCache, processOpenFileLimit, storeMemoryBudget } from './store-sizing.js';
import { resumeInterruptedRotations } from '../../storage/server/key-rotation.js';
import { bansDbKey, watchKeyFiles, type KeyWatcher } from './key-security.js';
import { loadTlsMaterial } from '../monitoring/tls-cert.js';
import { prepareCluster, type ClusterSetup } from '../cluster/setup.js';
import { clubOfSession } from '../club/session.js';
import { startWebApp, type WebApp } from '../web/app.js';

/**
 * What `commusicd` does: configuration, data folder, identity key (created on the very first
 * start, the embedded default), the ban system and mailer, the listener, the control socket,
 * and signal handling. bin/commusicd.ts only parses flags and calls runDaemon(); tests call
 * startServer() to get the same stack in-process.
 */
export interface RunOptions extends ConfigSources {
  /** Create the identity key when the data folder has none (the embedded default). */
  createKeyIfMissing?: boolean;
  print?: (line: string) => void;
  /** Operator passphrase of a passphrase-protected master key file. */
  passphrase?: string | Buffer;
}

export function ensureIdentity(config: Config, create: boolean, print: (l: string) => void): IdentityKey {
  const path = dataPaths(config.dataDir).identityKey;
  if (!existsSync(path) && create) {
    const identity = generateIdentity();
    saveIdentity(path, identity);
    print(`created identity key ${path}`);
    return identity;
  }
  const identity = loadIdentity(path);
  ensurePublicKeyFile(path, identity);
  return identity;
}

/** The live objects operations reach on the running daemon. */
export interface OnlineContext extends BackupOpsContext {
  readonly daemon: Daemon;
  readonly banSystem: BanSystem;
  readonly keyWatch: KeyWatcher;
}

export interface RunningServer {
  readonly config: Config;
  readonly identity: IdentityKey;
  readonly storage: Storage;
  readonly daemon: Daemon;
  readonly banSystem: BanSystem;
  readonly control: ControlServer;
  readonly logger: Logger;
  /** The HTTPS health/metrics endpoint; undefined when disabled or its address was busy. */
  readonly health: HealthEndpoint | undefined;
  /** The web application for club members; undefined unless web.listen is configured. */
  readonly web: WebApp | undefined;
  /** The cluster part; its `node` is undefined without a `cluster` configuration. */
  readonly cluster: ClusterSetup;
  stop(): Promise<void>;
}

export interface StartOptions {
  logger: Logger;
  print?: (l: string) => void;
  createKeyIfMissing?: boolean;
  /** Operator passphrase of a passphrase-protected master key file. */
  passphrase?: string | Buffer;
  /** Key-file poll interval (tests shorten it). */
  keyWatchPollMs?: number;
  /**
   * The storage worker threads (tests: a pool that holds a key rotation at a step). Default one
   * pool of one worker, shared by backups, downloads, cluster snapshots and key rotation.
   */
  workers?: SnapshotPool;
}

/**
 * Opens everything in dependency order and, if any step fails, closes what was opened in
 * reverse order, so a failed start leaves no socket, watcher or open store behind.
 */
export async function startServer(config: Config, opts: StartOptions): Promise<RunningServer> {
  const print = opts.print ?? (() => {});
  const logger = opts.logger;
  const closers: Array<() => Promise<void> | void> = [];
  const closeAll = async () => {
    for (const c of closers.splice(0).reverse()) {
      try {
        await c();
      } catch (e) {
        logger.error('close failed', { error: (e as Error)?.name });
      }
    }
  };
  // A data folder this start created is removed again if the start fails before filling it.
  const newFolder = !existsSync(config.dataDir);
  try {
    // Everything the daemon creates (stores, WAL files, outbox, sockets) is for its user alone.
    process.umask(0o077);
    mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
    // StrictModes: refuse a data folder (and control.sock's folder) others could write to.
    assertSafeDataDir(config.dataDir);
    // Start-up order: (1) the data folder's lock (the control socket), so a second daemon on
    // the same folder stops before it binds or writes anything; (2) the client port, so a port
    // in use is found before (3) a new data folder is initialised (keys, stores).
    const control = await ControlServer.bind(dataPaths(config.dataDir).controlSocket, logger);
    closers.push(() => control.close());
    await checkPortFree(config.listen);
    ensureIdentity(config, opts.createKeyIfMissing ?? true, print);
    // The current key, and during a rollover the next or previous one (daemon/identity-keys.ts).
    const identities = openIdentityHolder(dataPaths(config.dataDir).identityKey);
    const identity = identities.current;
    const storage = await openStorage({
      dataDir: config.dataDir,
      create: opts.createKeyIfMissing ?? true,
      logger,
      ...(opts.passphrase !== undefined ? { passphrase: opts.passphrase } : {}),
    });
    closers.push(() => storage.close());
    // Archives and restore entries are signed with the key that signs the change-log heads.
    storage.identity = identity;
    sizeStoreCache(config, storage, logger);
    const resumed = await resumeInterruptedRotations(storage);
    if (resumed.master || resumed.clubs.length > 0 || resumed.deleted.length > 0) logger.warn('finished interrupted key operations', resumed);
    // One queue for the process (crypto/password.ts); the configuration sizes it.
    passwordHashQueue.setConcurrency(config.limits.passwordHashConcurrency);
    passwordHashQueue.setPerSourceQueued(config.limits.passwordHashQueuedPerSource);
    const bus = new ViolationBus();
    const banSystem = await openBanSystem({ dataDir: config.dataDir, key: bansDbKey(storage), bus, policy: config.bans, mail: config.mail, logger });
    closers.push(() => banSystem.close());
    const keyWatch = watchKeyFiles(storage, dataPaths(config.dataDir).identityKey, banSystem, logger, opts.keyWatchPollMs);
    closers.push(() => keyWatch.close());
    const table: BanTable = banSystem.table;
    const backups = new BackupService({ storage, config: config.backups, mailer: banSystem.mailer, logger, ...(opts.workers ? { snapshots: opts.workers } : {}) });
    closers.push(() => backups.close());
    const dispatcher = new Dispatcher();
    const clubServices = { storage, violations: bus, identity, logger, idleTimeoutMs: config.limits.idleTimeoutMs };
    registerClubCommands(dispatcher, clubServices);
    registerBackupCommands(dispatcher, clubServices, { snapshots: backups.snapshots });
    const isBanned = (ip: string) => table.check(ip, Date.now()) !== undefined;
    // Several servers (docs/CLUSTER.md): the gates go on before the listener accepts.
    let daemonRef: Daemon | undefined;
    const cluster = prepareCluster(config, {
      storage,
      services: clubServices,
      workers: backups.snapshots,
      dispatcher,
      table,
      engine: banSystem.engine,
      logger,
      kick: () => daemonRef?.disconnectBanned(isBanned),
      violations: bus,
      fingerprints: () => [identities.current.fingerprint, ...(identities.rollover ? [identities.rollover.otherKey] : [])],
      clubMoved: (club, address) => daemonRef?.closeSessions((session) => clubOfSession(session) === club, { event: 'club.moved', payload: { club, ...(address ? { server: address } : {}) } }),
    });
    if (cluster.replicateDocument) Object.assign(clubServices, { replicateDocument: cluster.replicateDocument });
    const daemon = await Daemon.start({ config, identity, logger, violations: bus, dispatcher, bannedUntil: (ip) => table.check(ip, Date.now())?.expires, identityNotice: () => identities.notice, helloDropTolerated: () => identities.helloDropTolerated(Date.now()) });
    daemonRef = daemon;
    closers.push(() => daemon.stop());
    // A rollover step: everything that signs with the identity key takes the new current key.
    let notified = 0;
    identities.subscribe((set, notice) => {
      storage.identity = set.current;
      clubServices.identity = set.current;
      notified = daemon.setIdentity(set.current, notice);
      logger.warn('identity key rollover step', { phase: set.phase, fingerprint: set.current.fingerprint, sessionsNotified: notified });
    });
    await cluster.start(daemon.address());
    closers.push(() => cluster.stop());
    // Cluster: each club's backup by its primary only, with shared state and keys (docs/CLUSTER.md).
    closers.push(await startClusterBackups(cluster.node, { storage, service: backups, logger }));
    // A ban also ends the sessions its source already has open.
    // Deferred past the current turn so that the answer to the request that caused the ban (a
    // FORBIDDEN) is queued first and goes out before CLOSE 4 (PROTOCOL.md 11).
    const stopKicking = banSystem.engine.onBan(() => {
      setImmediate(() => daemon.disconnectBanned(isBanned));
    });
    closers.push(() => stopKicking());
    const ctx: OnlineContext = { dataDir: config.dataDir, daemon, banSystem, keyWatch, bans: async () => table, storage: async () => storage, backups: async () => backups, expectKeyChange: (fn) => keyWatch.expectChange(fn), bansChanged: () => daemon.disconnectBanned(isBanned), cluster: () => cluster.node, identityChanged: () => (identities.reload(), notified) };
    // Monitoring: one set of providers feeds `status` and /metrics.
    let health: HealthEndpoint | undefined;
    let healthOff = config.health.enabled ? 'not started yet' : 'disabled in the configuration (health.enabled: false)';
    const status: StatusContext = {
      daemon,
      version: VERSION,
      get fingerprint() {
        return identities.current.fingerprint;
      },
      identityRollover: () => identities.rollover,
      listen: () => `${daemon.address().host}:${daemon.address().port}`,
      activeBans: () => banSystem.table.size,
      outboxLength: () => banSystem.mailer.outboxLength,
      openStores: () => storage.cache.size,
      storeCache: () => ({ open: storage.cache.size, limit: storage.cache.maxOpen, ...storage.cache.stats }),
      keyWatchState: () => keyWatch.state,
      lastBackups: () => backups.lastBackups(),
      health: () => health && { listen: `${health.server.address().host}:${health.server.address().port}`, certFingerprint: health.server.certificate.fingerprint256 },
      healthOff: () => (health ? undefined : healthOff),
    };
    const registry = buildOperations<OnlineContext>();
    registerStatusOps(registry, () => status);
    control.attach(registry, ctx);
    health = await startHealthIfEnabled({ config, sources: status, logger, print, listenerUp: () => daemon.address().port > 0, onOff: (why) => (healthOff = why) });
    closers.push(() => health?.server.close());
    const web = await startWebIfConfigured(config, { dispatcher, services: clubServices, identity, logger, isBanned, print });
    closers.push(() => web?.close());
    // The nightly schedule starts last, once clients can be served (it catches up missed nights).
    backups.start();
    let stopped: Promise<void> | undefined;
    return {
      config,
      get identity() {
        return identities.current;
      },
      storage,
      daemon,
      banSystem,
      control,
      logger,
      health,
      web,
      cluster,
      stop() {
        stopped ??= closeAll();
        return stopped;
      },
    };
  } catch (e) {
    await closeAll();
    if (newFolder) removeIfEmpty(config.dataDir);
    throw e;
  }
}

/**
 * The web application (daemon/web/) when web.listen is set: the operator's certificate
 * (web.certFile/keyFile) or the self-signed default the health endpoint uses. A certificate
 * problem or a busy address stops the start: the operator asked for the listener.
 */
async function startWebIfConfigured(
  config: Config,
  o: { dispatcher: Dispatcher; services: ClubServices; identity: IdentityKey; logger: Logger; isBanned: (ip: string) => boolean; print: (l: string) => void },
): Promise<WebApp | undefined> {
  const w = config.web;
  if (!w.listen) return undefined;
  const listen = splitHostPort(w.listen);
  const tls = loadTlsMaterial({ dataDir: config.dataDir, certFile: w.certFile, keyFile: w.keyFile, altNames: [listen.host] });
  const web = await startWebApp(
    { dispatcher: o.dispatcher, services: o.services, tls, identity: o.identity, logger: o.logger, isBanned: o.isBanned, idleTimeoutMs: w.idleTimeoutMs, absoluteTimeoutMs: w.absoluteTimeoutMs, maxSessions: w.maxSessions },
    listen,
  );
  const a = web.address();
  o.print(`web application https://${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port} (certificate ${tls.fingerprint256})`);
  return web;
}

/**
 * Apply `storeCache` (daemon/main/store-sizing.ts): size the cache for the clubs hosted, refuse to start
 * (ConfigError with what to set) when the open-file limit or the memory budget cannot hold it.
 */
function sizeStoreCache(config: Config, storage: Storage, logger: Logger): void {
  const plan = planStoreCache({
    setting: config.storeCache.maxOpen,
    clubs: storage.server.countClubs(),
    maxConnections: config.limits.maxConnections,
    openFileLimit: processOpenFileLimit(),
    memoryBudgetBytes: storeMemoryBudget(config.storeCache.memoryBudgetMiB),
  });
  if (!plan.ok) throw new ConfigError(plan.message);
  storage.cache.setMaxOpen(plan.maxOpen);
  for (const w of plan.warnings) logger.warn(`store cache: ${w}`, { event: 'store-cache' });
  logger.info('store cache sized', { event: 'store-cache', setting: config.storeCache.maxOpen, maxOpen: plan.maxOpen, fds: plan.fdsNeeded, memoryMiB: Math.ceil(plan.memoryBytes / 2 ** 20) });
}

function removeIfEmpty(dir: string): void {
  try {
    if (readdirSync(dir).length === 0) rmdirSync(dir);
  } catch {
    // Not ours to clean any further.
  }
}

/** Port already in use: the start stops before a new data folder is initialised. */
export class ListenError extends Error {
  override readonly name = 'ListenError';
  constructor(
    readonly code: string,
    readonly listen: string,
  ) {
    super(`cannot listen on ${listen}: ${code}${code === 'EADDRINUSE' ? ' (another daemon or program has this port)' : ''}`);
  }
}

/** Binds the client address once and lets it go: in use or not permitted throws ListenError. */
async function checkPortFree(listen: string): Promise<void> {
  const { host, port } = splitHostPort(listen);
  if (port === 0) return;
  const probe = createServer();
  await new Promise<void>((resolve, reject) => {
    probe.once('error', (e: NodeJS.ErrnoException) => reject(new ListenError(e.code ?? 'ERR', listen)));
    probe.listen({ host, port, exclusive: true }, () => resolve());
  });
  await new Promise<void>((r) => probe.close(() => r()));
}

export async function runDaemon(opts: RunOptions): Promise<RunningServer> {
  const print = opts.print ?? ((l: string) => process.stdout.write(`${l}\n`));
  const config = loadConfig(opts);
  const logger = createLogger({ level: config.logLevel, format: config.logFormat, ...(config.logFile ? { file: config.logFile } : {}) });
  const server = await startServer(config, {
    logger,
    print,
    createKeyIfMissing: opts.createKeyIfMissing ?? true,
    ...(opts.passphrase !== undefined ? { passphrase: opts.passphrase } : {}),
  });
  // Signal handlers go in before the "listening" line: whoever reads it may signal at once.
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info('signal', { signal });
    void server.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  new Reloader({ sources: opts, config, logger, health: server.health?.server, web: server.web }).installSignal();
  // logrotate: move the file away, then SIGUSR1 (deploy/logrotate.conf); the daemon writes anew.
  process.on('SIGUSR1', () => {
    try {
      logger.info('log files reopened', { files: reopenLogFiles(logger) });
    } catch (e) {
      logger.error('log file reopen failed', { code: (e as NodeJS.ErrnoException).code ?? 'ERR' });
    }
  });
  const a = server.daemon.address();
  const where = `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
  print(`server fingerprint: ${server.identity.fingerprint}`);
  print(`commusicd listening on ${where}`);
  // systemd Type=notify: ready only now, with the listener open and the signals in place.
  if (await notifyReady(opts.env ?? {}, `listening on ${where}`)) logger.info('systemd notified', { ready: true });
  return server;
}
