import { readFileSync, statSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { z } from 'zod';
import { BanPolicySchema, CidrSchema } from '../bans/ban-policy.js';
import { MailerConfigSchema } from '../mail/mailer.js';
import { BackupConfigSchema } from '../backup/backup-service.js';
import { ConfigSyntaxError, MAX_CONFIG_BYTES, keysAt, parseConfigText, suggest, type ParsedConfigFile } from './config-file.js';

/**
 * Daemon configuration: defaults, then a YAML file (JSON files read too), then COMMUSIC_* environment variables,
 * then command-line flags, each overriding the one before. Everything is validated with one
 * schema, and an invalid value stops the daemon with the path and reason.
 */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly code = 'CONFIG_INVALID';
}

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, 'expected HOST:PORT (IPv6 in brackets)')
  .refine((s) => Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535, 'port above 65535');

const limitsSchema = z
  .object({
    maxConnections: z.number().int().min(1).max(1_000_000).default(10_000),
    /** The pending-handshake pool (OpenSSH MaxStartups "full"). */
    maxPendingHandshakes: z.number().int().min(1).max(100_000).default(512),
    /** Random early drop starts at this many pending handshakes (MaxStartups "start"). */
    earlyDropStart: z.number().int().min(1).max(100_000).default(256),
    /** Drop probability at earlyDropStart, rising linearly to 1 at the full pool (MaxStartups "rate"). */
    earlyDropRate: z.number().min(0).max(1).default(0.3),
    maxPendingHandshakesPerIp: z.number().int().min(1).max(10_000).default(16),
    /** Pending handshakes per IPv4 /24 or IPv6 /64 (limitPrefixV4, limitPrefixV6). */
    maxPendingHandshakesPerPrefix: z.number().int().min(1).max(100_000).default(64),
    /** Established sessions that have not logged in yet: in all, per address, per prefix. */
    maxPreLogin: z.number().int().min(1).max(1_000_000).default(2048),
    maxPreLoginPerIp: z.number().int().min(1).max(10_000).default(16),
    maxPreLoginPerPrefix: z.number().int().min(1).max(100_000).default(64),
    limitPrefixV4: z.number().int().min(8).max(32).default(24),
    limitPrefixV6: z.number().int().min(16).max(128).default(64),
    /** Whole deadline for the handshake, from accept; bytes do not extend it. */
    handshakeTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
    /** Whole deadline for a record, from its first byte to its last; bytes do not extend it. */
    recordTimeoutMs: z.number().int().min(100).max(600_000).default(30_000),
    /** Whole deadline for logging in, from the end of the handshake. */
    loginTimeoutMs: z.number().int().min(100).max(3_600_000).default(60_000),
    idleTimeoutMs: z.number().int().min(1_000).max(86_400_000).default(300_000),
    requestTimeoutMs: z.number().int().min(100).max(3_600_000).default(120_000),
    shutdownGraceMs: z.number().int().min(0).max(600_000).default(10_000),
    /** scrypt password hashes running at once (each holds 128 MiB; crypto/password.ts). */
    passwordHashConcurrency: z.number().int().min(1).max(64).default(2),
    /** Password hashes one source address (IPv6: /64) may have waiting; one more gets BUSY. */
    passwordHashQueuedPerSource: z.number().int().min(1).max(64).default(4),
    /** Pause reading a connection while this many bytes wait to be written to it. */
    writeHighWaterBytes: z.number().int().min(65_536).max(64 * 1024 * 1024).default(1024 * 1024),
  })
  .strict();

/** The HTTPS health/metrics endpoint (daemon/monitoring/health-server.ts). Reloadable on SIGHUP except `listen`. */
const healthSchema = z
  .object({
    enabled: z.boolean().default(true),
    listen: hostPort.default('127.0.0.1:7444'),
    /** Operator's PEM certificate and key; without them a self-signed one lives in <data>/tls/. */
    certFile: z.string().min(1).optional(),
    keyFile: z.string().min(1).optional(),
    /** Who may read /metrics without a token. */
    allowCidrs: z
      .array(CidrSchema)
      .default(['127.0.0.1/32', '::1/128']),
    /** Bearer token that opens /metrics from anywhere (prefer tokenFile). */
    bearerToken: z.string().min(16, 'use at least 16 characters').optional(),
    tokenFile: z.string().min(1).optional(),
  })
  .strict()
  .refine((h) => !h.certFile === !h.keyFile, { message: 'certFile and keyFile go together', path: ['certFile'] })
  .refine((h) => !(h.bearerToken && h.tokenFile), { message: 'give bearerToken or tokenFile, not both', path: ['tokenFile'] });

/**
 * The web application (daemon/web/): off unless `listen` is given. HTTPS only (TLS 1.2+), with the
 * operator's certificate or the self-signed default the health endpoint uses. Timeouts follow
 * the OWASP Session Management Cheat Sheet (idle and absolute).
 */
const webSchema = z
  .object({
    /** HOST:PORT of the HTTPS listener; absent: no web application. */
    listen: hostPort.optional(),
    certFile: z.string().min(1).optional(),
    keyFile: z.string().min(1).optional(),
    /**
     * A session unused this long ends (milliseconds). The club commands' own idle limit
     * (limits.idleTimeoutMs) applies to the login behind it too: the shorter one wins.
     */
    idleTimeoutMs: z.number().int().min(10_000).max(86_400_000).default(300_000),
    /** A session ends this long after its login, used or not (milliseconds). */
    absoluteTimeoutMs: z.number().int().min(60_000).max(7 * 86_400_000).default(8 * 3_600_000),
    /** Logged-in sessions kept at most; the oldest idle one makes room. */
    maxSessions: z.number().int().min(1).max(1_000_000).default(10_000),
  })
  .strict()
  .refine((w) => !w.certFile === !w.keyFile, { message: 'certFile and keyFile go together', path: ['certFile'] });

/**
 * The club store cache (storage/club/store-cache.ts, sizing in daemon/main/store-sizing.ts). `maxOpen`:
 * how many club stores stay open at once; `auto` takes what the open-file limit and the memory
 * budget allow and refuses to start when that is fewer than the clubs hosted. Restart to change.
 */
const storeCacheSchema = z
  .object({
    maxOpen: z.union([z.literal('auto'), z.number().int().min(1).max(1_000_000)]).default('auto'),
    /** Memory the open stores may take (about 0.4 MiB each); default a quarter of the memory limit. */
    memoryBudgetMiB: z.number().int().min(1).max(16 * 1024 * 1024).optional(),
  })
  .strict();

/**
 * Several servers (issue 14, docs/CLUSTER.md): off unless `cluster` is given. Every member names
 * the same etcd cluster and its own node id; the advertised address (what clients are
 * redirected to) defaults to the listen address.
 */
const clusterSchema = z
  .object({
    /** Client URLs of the etcd members (`--cluster-etcd URL[,URL...]`). */
    etcd: z
      .array(z.string().regex(/^https?:\/\/(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'expected http(s)://HOST:PORT'))
      .min(1)
      .max(15),
    /** This server's id in the cluster (`--node-id`): a-z, 0-9 and '-', at most 64. */
    nodeId: z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/, "use a-z, 0-9 and '-', at most 64 characters"),
    /** HOST:PORT clients are redirected to (`--advertise`); default: the listen address. */
    advertise: hostPort.optional(),
    /** Member lease in seconds: a dead server's clubs are taken over about this long after it died. */
    leaseTtlSec: z.number().int().min(1).max(60).default(2),
    /** Deadline of each etcd call in ms. */
    callTimeoutMs: z.number().int().min(50).max(10_000).default(500),
    /** Standbys per club. */
    standbys: z.number().int().min(1).max(4).default(1),
    /** Log entries kept below the slowest standby and the head when a club's log is trimmed. */
    logKeepEntries: z.number().int().min(1).max(1_000_000).default(100),
    /** etcd history younger than this stays uncompacted (the placement leader compacts); 0: use etcd's auto-compaction. */
    compactAfterSec: z.number().int().min(0).max(86_400).default(300),
    /** Key prefix of this cluster in etcd (several clusters may share one etcd). */
    prefix: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}\/$/, "letters, digits, '_' or '-', ending in '/'").default('commusic/'),
    /** TLS with a client certificate to etcd (production; OPERATIONS.md "etcd"). */
    tls: z
      .object({ caFile: z.string().min(1), certFile: z.string().min(1).optional(), keyFile: z.string().min(1).optional() })
      .strict()
      .refine((t) => !t.certFile === !t.keyFile, { message: 'certFile and keyFile go together', path: ['certFile'] })
      .optional(),
  })
  .strict()
  .refine((c) => c.etcd.every((u) => u.startsWith('https://')) || c.etcd.every((u) => u.startsWith('http://')), { message: 'use https:// for every etcd member or for none', path: ['etcd'] })
  .refine((c) => !c.tls || c.etcd.every((u) => u.startsWith('https://')), { message: 'tls needs https:// etcd URLs', path: ['tls'] });

export const configSchema = z
  .object({
    dataDir: z.string().min(1).default('./data'),
    listen: hostPort.default('127.0.0.1:7443'),
    logLevel: z.enum(['error', 'warn', 'info', 'debug']).default('info'),
    logFile: z.string().optional(),
    /** json: one JSON object a line; text: "TIME LEVEL message key=value" (journald, people). */
    logFormat: z.enum(['json', 'text']).default('json'),
    limits: limitsSchema.default({}),
    health: healthSchema.default({}),
    /** Ban policy per violation kind (daemon/bans/ban-policy.ts). */
    bans: BanPolicySchema.default({}),
    /** Alert mail to the service team; without smtp, mails go to DATA/outbox/sent-local/ (daemon/mail/mailer.ts). */
    mail: MailerConfigSchema.default({}),
    /** Nightly backups: destinations, time, retention, parallelism, mail size limit (daemon/backup/backup-service.ts). */
    backups: BackupConfigSchema.default({}),
    /** The web application for club members (daemon/web/); off unless web.listen is set. */
    web: webSchema.default({}),
    /** How many club stores stay open at once, checked at start against open files and memory. */
    storeCache: storeCacheSchema.default({}),
    /** Several servers on etcd (docs/CLUSTER.md); absent: a single server. */
    cluster: clusterSchema.optional(),
    /** Diagnostic commands, off unless an operator turns them on (issue 16: none on a production server by default). */
    diag: z
      .object({
        /** `diag.echoStream`: echoes an upload stream back (benchmarks, flow-control tests). */
        echoStream: z.boolean().default(false),
      })
      .strict()
      .default({}),
  })
  .strict();

export type Config = z.infer<typeof configSchema>;
export type Limits = Config['limits'];

export interface ConfigSources {
  file?: string;
  env?: NodeJS.ProcessEnv;
  flags?: Partial<{ dataDir: string; listen: string; logLevel: string; logFormat: string; healthListen: string; webListen: string; clusterEtcd: string; nodeId: string; advertise: string }>;
}

const ENV_MAP: Record<string, (v: string) => [string[], unknown]> = {
  COMMUSIC_DATA: (v) => [['dataDir'], v],
  COMMUSIC_LISTEN: (v) => [['listen'], v],
  COMMUSIC_LOG_LEVEL: (v) => [['logLevel'], v],
  COMMUSIC_LOG_FILE: (v) => [['logFile'], v],
  COMMUSIC_LOG_FORMAT: (v) => [['logFormat'], v],
  COMMUSIC_HEALTH_LISTEN: (v) => [['health', 'listen'], v],
  COMMUSIC_WEB_LISTEN: (v) => [['web', 'listen'], v],
  COMMUSIC_STORE_CACHE_MAX_OPEN: (v) => [['storeCache', 'maxOpen'], v === 'auto' ? v : /^\d+$/.test(v) ? Number(v) : v],
};

function setPath(obj: Record<string, unknown>, path: string[], value: unknown): void {
  let o = obj;
  for (const k of path.slice(0, -1)) {
    o[k] = typeof o[k] === 'object' && o[k] !== null ? o[k] : {};
    o = o[k] as Record<string, unknown>;
  }
  o[path[path.length - 1]!] = value;
}

export function loadConfig(sources: ConfigSources = {}): Config {
  let raw: Record<string, unknown> = {};
  let file: ParsedConfigFile | undefined;
  if (sources.file) {
    let text: string;
    try {
      if (statSync(sources.file).size > MAX_CONFIG_BYTES) throw new ConfigError(`config file ${sources.file} is larger than ${MAX_CONFIG_BYTES} bytes`);
      text = readFileSync(sources.file, 'utf8');
    } catch (e) {
      if (e instanceof ConfigError) throw e;
      throw new ConfigError(`cannot read config file ${sources.file}`);
    }
    try {
      file = parseConfigText(text);
    } catch (e) {
      if (e instanceof ConfigSyntaxError) throw new ConfigError(`${sources.file}:${e.line}:${e.col}: not valid YAML or JSON: ${e.message}`);
      throw e;
    }
    raw = file.raw;
  }
  for (const [name, map] of Object.entries(ENV_MAP)) {
    const v = sources.env?.[name];
    if (v !== undefined && v !== '') {
      const [path, value] = map(v);
      setPath(raw, path, value);
    }
  }
  for (const [k, v] of Object.entries(sources.flags ?? {})) {
    if (v === undefined) continue;
    if (k === 'healthListen') setPath(raw, ['health', 'listen'], v);
    else if (k === 'webListen') setPath(raw, ['web', 'listen'], v);
    else if (k === 'clusterEtcd') setPath(raw, ['cluster', 'etcd'], String(v).split(',').map((u) => u.trim()).filter(Boolean));
    else if (k === 'nodeId') setPath(raw, ['cluster', 'nodeId'], v);
    else if (k === 'advertise') setPath(raw, ['cluster', 'advertise'], v);
    else raw[k] = v;
  }
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) throw new ConfigError(describeIssue(parsed.error.issues[0]!, sources.file, file));
  const cfg = parsed.data;
  cfg.dataDir = isAbsolute(cfg.dataDir) ? cfg.dataDir : resolve(cfg.dataDir);
  return cfg;
}

/**
 * One configuration problem as "FILE:LINE:COL: setting a.b: reason (did you mean X?)"; the
 * position is that of the setting in the file (or its nearest parent there).
 */
function describeIssue(issue: z.ZodIssue, fileName: string | undefined, file: ParsedConfigFile | undefined): string {
  let path = issue.path;
  let reason = issue.message;
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0]!;
    path = [...issue.path, key];
    const hint = suggest(key, keysAt(configSchema, issue.path));
    reason = `unknown setting "${key}"${hint ? ` (did you mean "${hint}"?)` : ''}`;
  }
  const pos = file?.locate(path);
  const where = fileName && pos ? `${fileName}:${pos.line}:${pos.col}: ` : '';
  return `${where}invalid configuration at ${path.join('.') || '(root)'}: ${reason}`;
}

export function splitHostPort(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  let host = s.slice(0, i);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return { host, port: Number(s.slice(i + 1)) };
}

/** Where things live inside the data folder. */
export function dataPaths(dataDir: string) {
  return {
    identityKey: join(dataDir, 'keys', 'identity.pem'),
    controlSocket: join(dataDir, 'control.sock'),
  };
}
