import { BanStore } from '../../storage/bans/ban-store.js';
import { wireBanAlerts } from './ban-alerts.js';
import { BanEngine } from './ban-engine.js';
import type { BanPolicyConfig } from './ban-policy.js';
import { nullLogger, type Logger } from '../common/log.js';
import { AlertMailer, type MailerConfig } from '../mail/mailer.js';
import type { ViolationBus } from './violations.js';

export interface BanSystemOptions {
  /** The data folder: `<dataDir>/bans.db` and `<dataDir>/outbox/`. */
  readonly dataDir: string;
  /** 32 bytes: page-encrypts bans.db. */
  readonly key?: Buffer;
  readonly bus: ViolationBus;
  readonly policy?: BanPolicyConfig;
  readonly mail?: MailerConfig;
  /** The security log. */
  readonly logger?: Logger;
}

export interface BanSystem {
  /** Call `table.check(ip, Date.now())` at accept time, before any crypto. */
  readonly table: BanStore;
  readonly engine: BanEngine;
  /** Also for other alert groups: 'key-file', 'outage'. */
  readonly mailer: AlertMailer;
  close(): Promise<void>;
}

/**
 * bus -> engine -> table, engine -> mailer, in one call, for the daemon. Close order: stop
 * taking violations, let the mailer put everything on disk, then close the table.
 */
export async function openBanSystem(opts: BanSystemOptions): Promise<BanSystem> {
  const logger = opts.logger ?? nullLogger();
  const table = BanStore.openInDir(opts.dataDir, opts.key ? { key: opts.key } : {});
  let mailer: AlertMailer;
  try {
    mailer = await AlertMailer.open({ dataDir: opts.dataDir, config: opts.mail ?? {}, logger });
  } catch (err) {
    table.close();
    throw err;
  }
  const engine = new BanEngine({ table, bus: opts.bus, policy: opts.policy ?? {}, logger });
  // Configured exemptions win over manual bans too: the table checks them at accept time.
  table.setConfigExempt(engine.policy.exempt);
  const unwire = wireBanAlerts(engine, mailer, logger);
  return {
    table,
    engine,
    mailer,
    async close() {
      unwire();
      engine.close();
      await mailer.close();
      table.close();
    },
  };
}
