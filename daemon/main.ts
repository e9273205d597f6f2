import { existsSync, mkdirSync } from 'node:fs';
import { generateIdentity, loadIdentity, saveIdentity, type IdentityKey } from '../crypto/identity.js';
import { dataPaths, loadConfig, type Config, type ConfigSources } from './config.js';
import { createLogger, type Logger } from './log.js';
import { Daemon } from './server.js';

/**
 * What `commusicd` does: configuration, data folder, identity key (created on the very first
 * start, the embedded default), the listener, and signal handling. bin/commusicd.ts only
 * parses flags and calls runDaemon().
 */
export interface RunOptions extends ConfigSources {
  /** Create the identity key when the data folder has none (the embedded default). */
  createKeyIfMissing?: boolean;
  print?: (line: string) => void;
}

export function ensureIdentity(config: Config, create: boolean, print: (l: string) => void): IdentityKey {
  const path = dataPaths(config.dataDir).identityKey;
  if (!existsSync(path) && create) {
    const identity = generateIdentity();
    saveIdentity(path, identity);
    print(`created identity key ${path}`);
    print(`server fingerprint: ${identity.fingerprint}`);
    return identity;
  }
  return loadIdentity(path);
}

export async function runDaemon(opts: RunOptions): Promise<{ daemon: Daemon; logger: Logger }> {
  const print = opts.print ?? ((l: string) => process.stdout.write(`${l}\n`));
  const config = loadConfig(opts);
  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  const logger = createLogger({ level: config.logLevel, ...(config.logFile ? { file: config.logFile } : {}) });
  const identity = ensureIdentity(config, opts.createKeyIfMissing ?? true, print);
  const daemon = await Daemon.start({ config, identity, logger });
  const a = daemon.address();
  print(`commusicd listening on ${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`);
  print(`server fingerprint: ${identity.fingerprint}`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info('signal', { signal });
    void daemon.stop().then(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  return { daemon, logger };
}
