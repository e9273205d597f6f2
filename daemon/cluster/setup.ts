/**
 * Starting the daemon's cluster part when `cluster` is configured (issue 14; docs/CLUSTER.md):
 * the ClusterNode (lease, placement, club logs), the ownership and output gates on the command
 * dispatcher, the shared ban table, and the notice to sessions of a club that moved. Without a
 * `cluster` section none of this runs.
 */
import { readFileSync } from 'node:fs';
import { ClusterNode } from '../../cluster/node.js';
import type { ClusterBan } from '../../cluster/ban-board.js';
import { ViolationBoard } from '../../cluster/violation-board.js';
import type { Storage } from '../../storage/server/storage.js';
import type { SnapshotPool } from '../../storage/backup/snapshot-pool.js';
import type { BanTable } from '../../storage/bans/ban-store.js';
import type { BanEngine } from '../bans/ban-engine.js';
import { PeerChannel } from '../../cluster/peer-channel.js';
import type { ViolationSink } from '../bans/violations.js';
import { CommandError } from '../edge/command-errors.js';
import { installClusterGate } from './gate.js';
import { registerPeerCommands } from './peer-commands.js';
import { dataPaths, type Config } from '../main/config.js';
import { keyRingVerifier, trustedIdentityKeys } from '../../crypto/identity-keyring.js';
import type { Dispatcher } from '../edge/dispatcher.js';
import type { ClubServices } from '../club/session.js';
import type { Logger } from '../common/log.js';

export interface ClusterSetup {
  node: ClusterNode | undefined;
  /** Start the node once the listener is up (the advertised address defaults to it). */
  start(listen: { host: string; port: number }): Promise<ClusterNode | undefined>;
  stop(): Promise<void>;
  /** In a cluster: copy a stored document file to the club's standbys (ClubServices.replicateDocument). */
  replicateDocument?: (club: string, file: string) => Promise<void>;
}

export interface ClusterDeps {
  storage: Storage;
  /** The club services the handlers use: the gate runs their session check before a stored answer. */
  services: ClubServices;
  /** The daemon's storage worker threads (shared with backups and key rotation): cluster snapshots are copied there. */
  workers?: SnapshotPool;
  dispatcher: Dispatcher;
  table: BanTable;
  engine: BanEngine;
  logger: Logger;
  /** Close the sessions of a source banned elsewhere. */
  kick(): void;
  /** Tell the sessions of a club that moved where it went, then close them. */
  clubMoved(club: string, address: string | undefined): void;
  /** Where failed peer authentications and misused peer commands are reported. */
  violations: ViolationSink;
  /** The identity fingerprints a member may present (current key; during a rollover the other one too). */
  fingerprints(): readonly string[];
}

/**
 * Install the gates now (before the listener accepts: until the node has joined, club requests
 * get UNAVAILABLE) and return a handle that starts the node once the listen address is known.
 */
export function prepareCluster(config: Config, d: ClusterDeps): ClusterSetup {
  const c = config.cluster;
  let node: ClusterNode | undefined;
  const setup: ClusterSetup = {
    get node() {
      return node;
    },
    async start() {
      return undefined;
    },
    async stop() {},
  };
  if (!c) return setup;
  // The peer channel's commands (documents, snapshots between members) and the gate that keeps
  // peer sessions and club sessions apart, then the cluster's own gates around everything.
  let channel: PeerChannel | undefined;
  registerPeerCommands(d.dispatcher, () => (node ? channel : undefined), d.violations);
  installClusterGate(d.dispatcher, () => node, d.services);
  setup.replicateDocument = async (club, file) => {
    const n = node;
    if (!n) throw new CommandError('UNAVAILABLE', 'this server is joining the cluster; retry shortly');
    try {
      await n.replicateDocument(club, file);
    } catch (e) {
      const r = n.route(club);
      if (r.kind === 'redirect') throw new CommandError('MOVED', `${r.address} club served by another server`);
      d.logger.warn('document not copied to the standbys; upload refused', { event: 'cluster.doc.replicate-failed', clubId: club, code: (e as { code?: string }).code ?? (e as Error).name });
      throw new CommandError('UNAVAILABLE', 'the document could not be copied to the standby server; retry shortly');
    }
  };
  let unsubscribe: (() => void) | undefined;
  let counts: ViolationBoard | undefined;
  setup.start = async (listen) => {
    const tls = c.tls ? { ca: readFileSync(c.tls.caFile), ...(c.tls.certFile ? { cert: readFileSync(c.tls.certFile) } : {}), ...(c.tls.keyFile ? { key: readFileSync(c.tls.keyFile) } : {}) } : undefined;
    const wildcard = listen.host === '0.0.0.0' || listen.host === '::';
    channel = new PeerChannel({
      nodeId: c.nodeId,
      masterKey: d.storage.master.key,
      fingerprints: d.fingerprints,
      // Until the node has joined, no member is known: transfers fail and are retried.
      resolve: (id) => node?.memberAddress(id),
      isMember: (id) => node?.memberAddress(id) !== undefined,
      ...(wildcard ? {} : { localAddress: listen.host }),
      logger: d.logger,
    });
    node = await ClusterNode.start({
      peers: channel,
      etcd: { endpoints: c.etcd, prefix: c.prefix, callTimeoutMs: c.callTimeoutMs, ...(tls ? { tls } : {}) },
      nodeId: c.nodeId,
      address: c.advertise ?? `${listen.host.includes(':') ? `[${listen.host}]` : listen.host}:${listen.port}`,
      storage: d.storage,
      masterKey: d.storage.master.key,
      ttlSec: c.leaseTtlSec,
      standbys: c.standbys,
      logKeepEntries: c.logKeepEntries,
      compactAfterMs: c.compactAfterSec * 1000,
      logger: d.logger,
      ...(d.workers ? { workers: d.workers } : {}),
      // Snapshots' signed change-log heads, checked with the shared identity's public keys.
      auditVerifier: () => {
        const keys = trustedIdentityKeys(dataPaths(d.storage.dataDir).identityKey);
        return keys.length > 0 ? keyRingVerifier(keys) : undefined;
      },
    });
    const n = node;
    // Bans made here go to every server; bans made elsewhere enter the local table.
    unsubscribe = d.engine.onBan((ban) => {
      if (ban.expires <= Date.now()) return;
      n.bans.publish({ address: ban.address, untilMs: ban.expires, reason: ban.reason }).catch((e: unknown) => d.logger.warn('ban not shared with the cluster', { event: 'cluster.ban.publish', error: (e as Error).name }));
    });
    n.bans.on('ban', (b: ClusterBan) => {
      if (b.origin === n.nodeId) return;
      const now = Date.now();
      const have = d.table.banCovering(b.address, now);
      if (!have || have.expires < b.untilMs) d.table.add({ address: b.address, expires: b.untilMs, reason: b.reason, source: 'auto' }, now);
      setImmediate(() => d.kick());
    });
    n.bans.on('unban', (address: string) => {
      // ended or lifted on the cluster: lift the local copy of exactly this ban
      const have = d.table.banCovering(address, Date.now());
      if (have && have.address === address) d.table.remove(address);
    });
    // Violation counts: each server judges on the sum of all servers' counts (BANS-AND-ALERTS.md).
    counts = new ViolationBoard(n.gw, { masterKey: d.storage.master.key, nodeId: n.nodeId, logger: d.logger });
    await counts.start();
    d.engine.setShared(counts);
    n.on('club-moved', (club: string, route: { kind: string; address?: string }) => d.clubMoved(club, route.kind === 'redirect' ? route.address : undefined));
    d.logger.info('joined the cluster', { event: 'cluster.joined', node: n.nodeId, address: n.address });
    return n;
  };
  setup.stop = async () => {
    unsubscribe?.();
    d.engine.setShared(undefined);
    await counts?.stop();
    await node?.stop();
  };
  return setup;
}
