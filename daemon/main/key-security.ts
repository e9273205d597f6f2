import { randomBytes } from 'node:crypto';
import { identityFiles } from '../../crypto/identity-keyring.js';
import { watchKeyFile, type SecurityEvent } from '../../crypto/key-watch.js';
import type { Storage } from '../../storage/server/storage.js';
import type { BanSystem } from '../bans/ban-system.js';
import type { Logger } from '../common/log.js';

/**
 * Key-related wiring of the daemon: the ban table's page key, and the watch on the key files
 * (seed 2: the key "is watched permanently for unauthorised access").
 */

/**
 * bans.db holds IP addresses (personal data), so it is page-encrypted too. Its key is random
 * and kept inside the encrypted server database, so a master-key rotation (which re-encrypts
 * server.db) carries it along without touching bans.db.
 */
export function bansDbKey(storage: Storage): Buffer {
  const stored = storage.server.getMeta('bansDbKey');
  if (stored) return Buffer.from(stored, 'hex');
  const key = randomBytes(32);
  storage.server.setMeta('bansDbKey', key.toString('hex'));
  return key;
}

export type KeyWatchState = 'ok' | 'alarm' | 'off';

export interface KeyWatcher {
  /** 'alarm' from the first security event until the operator restarts the daemon. */
  readonly state: KeyWatchState;
  /** Runs the daemon's own key change (rotate-master, rotate-identity) without raising an alarm. */
  expectChange<T>(fn: () => Promise<T>): Promise<T>;
  close(): void;
}

export function watchKeyFiles(storage: Storage, identityKeyPath: string, bans: BanSystem, log: Logger, pollMs?: number): KeyWatcher {
  let state: KeyWatchState = 'ok';
  const onEvent = (e: SecurityEvent) => {
    state = 'alarm';
    log.error('security event', { kind: e.kind, path: e.path, detail: e.detail });
    void bans.mailer
      .alert({
        group: 'key-file',
        kind: 'key-file',
        severity: 'critical',
        subject: `key file ${e.kind.replace('key-file-', '')}: ${e.path}`,
        lines: [
          `A key file of the server changed while the daemon was running.`,
          `file: ${e.path}`,
          `event: ${e.kind}`,
          `detail: ${e.detail}`,
          `time: ${e.time.toISOString()}`,
          `Nobody should touch this file while the daemon runs. Check who did (auth log, shell history), and whether the key must be rotated.`,
        ],
      })
      .catch((err: unknown) => log.error('could not queue the key-file alert', { error: (err as Error)?.name }));
  };
  const opts = { ...(pollMs ? { pollMs } : {}), onError: (err: Error) => log.warn('key watch error', { error: err.name }) };
  const master = watchKeyFile(storage.keyFilePath, onEvent, opts);
  // The identity key and, during a rollover, its next and previous keys: the same protection.
  // A next key appearing outside the daemon's own rotate-identity is an alarm too.
  const f = identityFiles(identityKeyPath);
  const identity = [f.current, f.next, f.previous].map((p) => watchKeyFile(p, onEvent, opts));
  const all = [master, ...identity];
  return {
    get state() {
      return state;
    },
    expectChange: (fn) => all.reduce<typeof fn>((inner, w) => () => w.expectChange(inner), fn)(),
    close() {
      for (const w of all) w.close();
      if (state === 'ok') state = 'off';
    },
  };
}
