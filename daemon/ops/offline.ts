import { BanStore } from '../../storage/bans/ban-store.js';
import { openStorage, type Storage } from '../../storage/server/storage.js';
import { dataPaths } from '../main/config.js';
import { callControl } from './control-socket.js';
import { bansDbKey } from '../main/key-security.js';
import { buildOperations, type OpsContext } from './ops.js';

/**
 * commusicctl's way to run an operation: through the running daemon's control socket when one
 * answers, otherwise directly on the data folder, opening only what the operation touches.
 * The daemon and an offline command never share the folder: a live control socket routes
 * every command to the daemon.
 */
export interface OfflineContext extends OpsContext {
  close(): Promise<void>;
}

export interface OfflineOptions {
  passphrase?: string | Buffer;
}

export function offlineContext(dataDir: string, opts: OfflineOptions = {}): OfflineContext {
  let storage: Promise<Storage> | undefined;
  let bans: Promise<BanStore> | undefined;
  const openSt = () =>
    (storage ??= openStorage({ dataDir, create: false, ...(opts.passphrase !== undefined ? { passphrase: opts.passphrase } : {}) }));
  return {
    dataDir,
    storage: openSt,
    bans: () => (bans ??= openSt().then((st) => BanStore.openInDir(dataDir, { key: bansDbKey(st) }))),
    close: async () => {
      await bans?.then((b) => b.close(), () => undefined);
      await storage?.then((s) => s.close(), () => undefined);
    },
  };
}

export async function runOperation(
  dataDir: string,
  op: string,
  args: unknown,
  opts: OfflineOptions = {},
): Promise<{ result: unknown; via: 'daemon' | 'data-folder' }> {
  const online = await callControl(dataPaths(dataDir).controlSocket, op, args);
  if (online) return { result: online.result, via: 'daemon' };
  const ctx = offlineContext(dataDir, opts);
  try {
    return { result: await buildOperations<OfflineContext>().run(ctx, op, args), via: 'data-folder' };
  } finally {
    await ctx.close();
  }
}

/**
 * Run one operation several times (batches of a bulk command): all through the daemon when it
 * answers the first call, otherwise all on the data folder opened once. Stops at the first error;
 * `done` tells how many calls finished before it.
 */
export async function runOperations(
  dataDir: string,
  op: string,
  argsList: readonly unknown[],
  opts: OfflineOptions = {},
  onResult: (result: unknown, index: number) => void = () => {},
): Promise<{ via: 'daemon' | 'data-folder'; done: number }> {
  if (argsList.length === 0) return { via: 'data-folder', done: 0 };
  const socket = dataPaths(dataDir).controlSocket;
  const first = await callControl(socket, op, argsList[0]);
  if (first) {
    onResult(first.result, 0);
    for (let i = 1; i < argsList.length; i++) {
      const r = await callControl(socket, op, argsList[i]);
      if (!r) throw new Error(`the daemon stopped answering after ${i} of ${argsList.length} batches`);
      onResult(r.result, i);
    }
    return { via: 'daemon', done: argsList.length };
  }
  const ctx = offlineContext(dataDir, opts);
  const registry = buildOperations<OfflineContext>();
  try {
    for (let i = 0; i < argsList.length; i++) onResult(await registry.run(ctx, op, argsList[i]), i);
    return { via: 'data-folder', done: argsList.length };
  } finally {
    await ctx.close();
  }
}
