/**
 * Cluster nodes in the test's own process (issue 14: tests/cluster-node, -stray, -backups, -trim,
 * -docs, -operator-writes): a 3-member etcd and a temporary folder per describe block, servers
 * made as docs/OPERATIONS.md adds one (a copy of an existing server's `keys/` folder and its
 * empty server database), each with its store and ClusterNode, and their teardown.
 */
import { cpSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { ClusterNode } from '../../cluster/node.js';
import type { ClusterNodeOptions } from '../../cluster/node-types.js';
import { openStorage, type Storage } from '../../storage/server/storage.js';
import { startEtcdCluster, type EtcdCluster } from './etcd.js';

/** One server of such a test. */
export interface NodeServer {
  id: string;
  storage: Storage;
  node: ClusterNode;
  dir: string;
}

/**
 * The set-up of a describe block: in before(), a 3-member etcd and a folder
 * `<tmp>/commusic-<name>-…`, handed to `started`; in after(), `teardown` (the block's servers),
 * then etcd stopped and the folder removed.
 */
export function useEtcdAndFolder(name: string, started: (etcd: EtcdCluster, root: string) => void, teardown: () => Promise<void> = async () => {}): void {
  let etcd: EtcdCluster | undefined;
  let root: string | undefined;
  before(async () => {
    etcd = await startEtcdCluster();
    root = mkdtempSync(join(tmpdir(), `commusic-${name}-`));
    started(etcd, root);
  });
  after(async () => {
    await teardown();
    await etcd?.stop();
    if (root) rmSync(root, { recursive: true, force: true });
  });
}

/** A fresh server data folder under `root` (server database and keys, fast scrypt) that new servers are copied from. */
export async function makeTemplate(root: string): Promise<string> {
  const tmpl = mkdtempSync(join(root, 'tmpl-'));
  (await openStorage({ dataDir: tmpl, create: true, scryptLog2N: 10 })).close();
  return tmpl;
}

/**
 * A new server's data folder `dir` as docs/OPERATIONS.md adds a server: the `keys/` folder and
 * the (empty) server database copied from `template`.
 */
export function newMemberFolder(template: string, dir: string): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  cpSync(join(template, 'keys'), join(dir, 'keys'), { recursive: true });
  cpSync(join(template, 'server.db'), join(dir, 'server.db'));
  return dir;
}

export interface NodeServerOptions {
  etcd: EtcdCluster;
  id: string;
  /** The server's data folder (made by newMemberFolder). */
  dir: string;
  /** Its place among the test's servers: its address is 127.0.0.<index + 2>:7000. */
  index: number;
  prefix: string;
  /** An open store to start on (a restart), instead of opening `dir`. */
  storage?: Storage;
  /** Runs on the opened store before the node starts. */
  prepare?: (storage: Storage) => void;
  /** Overrides of the node's options. */
  options?: Partial<ClusterNodeOptions>;
}

/**
 * Opens a server's store and starts its ClusterNode with the tests' settings: several servers share
 * this one process (and a loaded machine), so a 4 s lease, longer than the daemon's default, keeps
 * keepalives from lapsing behind the others' synchronous work; placement every 200 ms.
 */
export async function startNodeServer(o: NodeServerOptions): Promise<NodeServer> {
  const storage = o.storage ?? (await openStorage({ dataDir: o.dir }));
  o.prepare?.(storage);
  const node = await ClusterNode.start({
    etcd: { endpoints: o.etcd.endpoints, prefix: o.prefix },
    nodeId: o.id,
    address: `127.0.0.${o.index + 2}:7000`,
    storage,
    masterKey: storage.master.key,
    ttlSec: 4,
    planEveryMs: 200,
    ...o.options,
  });
  return { id: o.id, storage, node, dir: o.dir };
}

/** Stops each server's node and closes its store; a node that fails to stop does not keep the rest running. */
export async function stopNodeServers(servers: ReadonlyArray<{ node: ClusterNode; storage: Storage }>): Promise<void> {
  for (const s of servers) {
    await s.node.stop().catch(() => undefined);
    s.storage.close();
  }
}
