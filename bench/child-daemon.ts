/**
 * The daemon a bench child process serves (bench/data-child.ts, growth-child.ts, clubs-child.ts):
 * the club commands on `storage`, a fresh identity, the given configuration. When the parent
 * disconnects or sends {type: 'exit'}, it stops the daemon, closes the store, runs `cleanup` (the
 * child's temporary folder) and exits the process.
 */
import { generateIdentity } from '../crypto/identity.js';
import { ViolationBus } from '../daemon/bans/violations.js';
import { registerClubCommands } from '../daemon/club/club-commands.js';
import { nullLogger } from '../daemon/common/log.js';
import { Dispatcher } from '../daemon/edge/dispatcher.js';
import { Daemon } from '../daemon/edge/server.js';
import type { Config } from '../daemon/main/config.js';
import type { Storage } from '../storage/server/storage.js';

export interface ChildDaemon {
  daemon: Daemon;
  identity: ReturnType<typeof generateIdentity>;
}

export async function startChildDaemon(o: { storage: Storage; config: Config; passwordLog2N?: number; cleanup?: () => void }): Promise<ChildDaemon> {
  const identity = generateIdentity();
  const dispatcher = new Dispatcher();
  const bus = new ViolationBus();
  registerClubCommands(dispatcher, { storage: o.storage, violations: bus, identity, ...(o.passwordLog2N !== undefined ? { passwordLog2N: o.passwordLog2N } : {}) });
  const daemon = await Daemon.start({ config: o.config, identity, logger: nullLogger(), violations: bus, dispatcher });
  const stop = async () => {
    await daemon.stop(0);
    o.storage.close();
    o.cleanup?.();
    process.exit(0);
  };
  process.on('disconnect', () => void stop());
  process.on('message', (m: { type: string }) => {
    if (m.type === 'exit') void stop();
  });
  return { daemon, identity };
}
