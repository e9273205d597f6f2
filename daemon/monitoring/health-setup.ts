import { lstatSync, readFileSync } from 'node:fs';
import { assertPrivateFile } from '../../crypto/identity.js';
import { dataPaths, splitHostPort, type Config } from '../main/config.js';
import { diskWritableCheck, HealthServer, type HealthAccess, type ReadinessCheck } from './health-server.js';
import type { Logger } from '../common/log.js';
import { createDaemonMetrics, type DaemonMetrics, type MetricsSources } from './metrics.js';
import { loadTlsMaterial, type TlsMaterial } from './tls-cert.js';

/**
 * From configuration to a running health endpoint: certificate, access rules, metrics and the
 * standard readiness checks. runDaemon() calls startHealthEndpoint(); the SIGHUP reloader
 * (reload.ts) calls healthTls()/healthAccess() again with the new configuration.
 */
export class HealthConfigError extends Error {
  override readonly name = 'HealthConfigError';
  readonly code = 'HEALTH_TOKEN_FILE';
}

export function healthTls(config: Config): TlsMaterial {
  const h = config.health;
  const host = splitHostPort(h.listen).host;
  return loadTlsMaterial({
    dataDir: config.dataDir,
    certFile: h.certFile,
    keyFile: h.keyFile,
    altNames: [host],
  });
}

/** Allow-list and token; a token file must be a private regular file (it is a secret). */
export function healthAccess(config: Config): HealthAccess {
  const h = config.health;
  let token = h.bearerToken;
  if (h.tokenFile) {
    let st;
    try {
      st = lstatSync(h.tokenFile);
    } catch {
      throw new HealthConfigError(`health token file ${h.tokenFile} does not exist`);
    }
    if (!st.isFile() || (st.mode & 0o077) !== 0) {
      throw new HealthConfigError(`health token file ${h.tokenFile} must be a regular file readable by its owner only (chmod 600)`);
    }
    token = readFileSync(h.tokenFile, 'utf8').trim();
    if (token.length < 16) throw new HealthConfigError(`health token in ${h.tokenFile} is shorter than 16 characters`);
  }
  return { allowCidrs: h.allowCidrs, token };
}

export interface HealthEndpointOptions {
  readonly config: Config;
  /** The figures for /metrics: the daemon plus optional providers. */
  readonly sources: MetricsSources;
  /** Extra readiness checks (e.g. "stores"); "keys", "disk" and "listener" are built in. */
  readonly checks?: Readonly<Record<string, ReadinessCheck>>;
  readonly listenerUp?: () => boolean;
  readonly logger: Logger;
}

export interface HealthEndpoint {
  readonly server: HealthServer;
  readonly metrics: DaemonMetrics;
}

export async function startHealthEndpoint(opts: HealthEndpointOptions): Promise<HealthEndpoint> {
  const { config } = opts;
  const metrics = createDaemonMetrics(opts.sources);
  const keyPath = dataPaths(config.dataDir).identityKey;
  const checks: Record<string, ReadinessCheck> = {
    keys: () => {
      assertPrivateFile(keyPath);
      return true;
    },
    disk: diskWritableCheck(config.dataDir),
    ...(opts.listenerUp ? { listener: opts.listenerUp } : {}),
    ...opts.checks,
  };
  const server = await HealthServer.start({
    listen: config.health.listen,
    tls: healthTls(config),
    access: healthAccess(config),
    metrics,
    checks,
    logger: opts.logger,
  });
  return { server, metrics };
}

/** Why the endpoint is off, for `status`: the address, the error and what to do. */
export function healthOffReason(listen: string, code: string): string {
  if (code === 'EADDRINUSE') return `${listen} is in use (EADDRINUSE): another daemon on this host has it? give each daemon its own health.listen`;
  if (code === 'EACCES') return `${listen} is not permitted (EACCES): a port below 1024 needs privileges`;
  return `${listen} is not available on this host (${code})`;
}

/**
 * For runDaemon: start the endpoint if enabled. A certificate or token problem is the operator's
 * to fix and stops the start; an address already in use does not: the client service matters
 * more than its health endpoint, so the daemon runs on, logs the error and shows it in status.
 */
export async function startHealthIfEnabled(
  opts: HealthEndpointOptions & { print?: (l: string) => void; onOff?: (reason: string) => void },
): Promise<HealthEndpoint | undefined> {
  if (!opts.config.health.enabled) {
    opts.onOff?.('disabled in the configuration (health.enabled: false)');
    return undefined;
  }
  try {
    const ep = await startHealthEndpoint(opts);
    const a = ep.server.address();
    opts.print?.(`health endpoint https://${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port} (certificate ${ep.server.certificate.fingerprint256})`);
    return ep;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EADDRINUSE' && code !== 'EADDRNOTAVAIL' && code !== 'EACCES') throw e;
    opts.logger.error('health endpoint not started', { event: 'health-listen', listen: opts.config.health.listen, code });
    opts.print?.(`WARNING: health endpoint not started on ${opts.config.health.listen} (${code})`);
    opts.onOff?.(healthOffReason(opts.config.health.listen, code ?? 'ERR'));
    return undefined;
  }
}
