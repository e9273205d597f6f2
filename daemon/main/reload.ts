import { isDeepStrictEqual } from 'node:util';
import { loadConfig, splitHostPort, type Config, type ConfigSources } from './config.js';
import { healthAccess, healthTls } from '../monitoring/health-setup.js';
import type { HealthServer } from '../monitoring/health-server.js';
import { loadTlsMaterial, type TlsMaterial } from '../monitoring/tls-cert.js';
import type { Logger } from '../common/log.js';

/**
 * SIGHUP: read the configuration again and apply what can change while the daemon runs, without
 * touching the client listener or any client session:
 *   - logLevel
 *   - the health endpoint's certificate (re-read from certFile/keyFile, or the self-signed one),
 *     its CIDR allow-list and its token
 *   - the web application's certificate (web.certFile/keyFile), for new connections
 *   - whatever later code registers with addHook() (the ban policy, ...)
 * Settings that need a restart (listen, dataDir, logFile, limits, storeCache, health.listen, health.enabled)
 * are reported in the log and left as they are. A configuration that does not validate, or a
 * certificate that does not load, changes nothing: the daemon keeps running on the old one.
 */
export type ReloadHook = (config: Config) => void | Promise<void>;

export interface ReloadReport {
  readonly ok: boolean;
  readonly applied: string[];
  readonly restartNeeded: string[];
  readonly error?: string;
}

export interface ReloaderOptions {
  /** The sources the daemon loaded its configuration from (file, env, flags). */
  readonly sources: ConfigSources;
  /** The configuration in force now. */
  readonly config: Config;
  readonly logger: Logger;
  readonly health?: HealthServer | undefined;
  /** The web application's listener, when web.listen is set (its certificate is swapped). */
  readonly web?: { reloadTls(tls: TlsMaterial): void; readonly certificate: TlsMaterial } | undefined;
}

const RESTART_KEYS = ['dataDir', 'listen', 'logFile', 'limits', 'storeCache'] as const;

export class Reloader {
  private current: Config;
  private readonly hooks: { name: string; fn: ReloadHook }[] = [];
  private running: Promise<ReloadReport> = Promise.resolve({ ok: true, applied: [], restartNeeded: [] });

  constructor(private readonly opts: ReloaderOptions) {
    this.current = opts.config;
  }

  get config(): Config {
    return this.current;
  }

  /** Called with the new configuration on every reload, after the built-in parts. */
  addHook(name: string, fn: ReloadHook): this {
    this.hooks.push({ name, fn });
    return this;
  }

  /** Reload now; concurrent calls run one after the other. Never throws. */
  reload(): Promise<ReloadReport> {
    this.running = this.running.then(() => this.reloadOnce());
    return this.running;
  }

  /** Install the SIGHUP handler; returns a function that removes it. */
  installSignal(): () => void {
    const handler = () => {
      this.opts.logger.info('signal', { signal: 'SIGHUP' });
      void this.reload();
    };
    process.on('SIGHUP', handler);
    return () => process.off('SIGHUP', handler);
  }

  private async reloadOnce(): Promise<ReloadReport> {
    const log = this.opts.logger;
    const applied: string[] = [];
    let next: Config;
    try {
      next = loadConfig(this.opts.sources);
    } catch (e) {
      const error = (e as Error).message;
      log.error('reload failed: configuration not valid; nothing changed', { event: 'reload', error });
      return { ok: false, applied, restartNeeded: [], error };
    }
    const prev = this.current;
    const restartNeeded: string[] = RESTART_KEYS.filter((k) => !isDeepStrictEqual(prev[k], next[k]));
    if (prev.health.listen !== next.health.listen) restartNeeded.push('health.listen');
    if (prev.health.enabled !== next.health.enabled) restartNeeded.push('health.enabled');
    if (prev.web.listen !== next.web.listen) restartNeeded.push('web.listen');
    try {
      // Prepare everything that can fail first, then apply: all or nothing.
      const health = this.opts.health;
      const tls = health && next.health.enabled ? healthTls(next) : undefined;
      const access = health && next.health.enabled ? healthAccess(next) : undefined;
      const web = this.opts.web;
      const webTls = web && prev.web.listen ? loadTlsMaterial({ dataDir: next.dataDir, certFile: next.web.certFile, keyFile: next.web.keyFile, altNames: [splitHostPort(prev.web.listen).host] }) : undefined;
      if (health && tls && access) {
        const certChanged = tls.fingerprint256 !== health.certificate.fingerprint256;
        health.reload({ tls, access });
        applied.push(certChanged ? 'health.certificate (new)' : 'health.certificate (unchanged)', 'health.access');
      }
      if (web && webTls) {
        const certChanged = webTls.fingerprint256 !== web.certificate.fingerprint256;
        web.reloadTls(webTls);
        applied.push(certChanged ? 'web.certificate (new)' : 'web.certificate (unchanged)');
      }
      if (prev.logLevel !== next.logLevel) {
        log.level = next.logLevel;
        applied.push('logLevel');
      }
    } catch (e) {
      const error = `${(e as Error).message}${(e as { code?: string }).code ? ` [${(e as { code?: string }).code}]` : ''}`;
      log.error('reload failed; nothing changed', { event: 'reload', error });
      return { ok: false, applied: [], restartNeeded, error };
    }
    // Keep the settings that were not applied as they run now, so the next comparison is honest.
    this.current = { ...next, ...pick(prev, RESTART_KEYS), health: { ...next.health, listen: prev.health.listen, enabled: prev.health.enabled }, web: { ...next.web, listen: prev.web.listen } };
    const failedHooks: string[] = [];
    for (const h of this.hooks) {
      try {
        await h.fn(this.current);
        applied.push(h.name);
      } catch (e) {
        failedHooks.push(h.name);
        log.error('reload hook failed', { event: 'reload', hook: h.name, error: (e as Error).message });
      }
    }
    if (restartNeeded.length > 0) log.warn('changed settings take effect only after a restart', { event: 'reload', settings: restartNeeded });
    log.info('configuration reloaded', { event: 'reload', applied });
    return failedHooks.length > 0
      ? { ok: false, applied, restartNeeded, error: `hooks failed: ${failedHooks.join(', ')}` }
      : { ok: true, applied, restartNeeded };
  }
}

function pick<T extends object, K extends keyof T>(o: T, keys: readonly K[]): Pick<T, K> {
  const out = {} as Pick<T, K>;
  for (const k of keys) out[k] = o[k];
  return out;
}
