import { BanStore } from '../storage/ban-store.js';
import { dataPaths } from './config.js';
import { callControl } from './control-socket.js';
import { buildOperations, type OpsContext } from './ops.js';

/**
 * commusicctl's way to run an operation: through the running daemon's control socket when one
 * answers, otherwise directly on the data folder, opening only what the operation touches.
 */
export interface OfflineContext extends OpsContext {
  close(): void;
}

export function offlineContext(dataDir: string): OfflineContext {
  let bans: BanStore | undefined;
  return {
    dataDir,
    bans: () => (bans ??= BanStore.openInDir(dataDir)),
    close: () => bans?.close(),
  };
}

export async function runOperation(dataDir: string, op: string, args: unknown): Promise<{ result: unknown; via: 'daemon' | 'data-folder' }> {
  const online = await callControl(dataPaths(dataDir).controlSocket, op, args);
  if (online) return { result: online.result, via: 'daemon' };
  const ctx = offlineContext(dataDir);
  try {
    return { result: await buildOperations<OfflineContext>().run(ctx, op, args), via: 'data-folder' };
  } finally {
    ctx.close();
  }
}
