import { BanStore } from '../storage/ban-store.js';
import { openStorage, type Storage } from '../storage/storage.js';
import { dataPaths } from './config.js';
import { callControl } from './control-socket.js';
import { bansDbKey } from './key-security.js';
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
