import { z } from 'zod';
import { configSchema } from './config.js';
import { unwrap } from './config-file.js';

/**
 * docs/CONFIG.md, generated from the configuration schema (daemon/main/config.ts): every setting with
 * its type, default and meaning. `node dist/daemon/main/config-doc.js > docs/CONFIG.md` writes it;
 * tests/config-doc.test.ts fails when the file is stale or a setting has no meaning below.
 */
export interface SettingRow {
  path: string;
  type: string;
  default: string;
}

function typeOf(s: z.ZodTypeAny): string {
  const u = unwrap(s);
  if (u instanceof z.ZodString) return 'string';
  if (u instanceof z.ZodNumber) return u.isInt ? 'integer' : 'number';
  if (u instanceof z.ZodBoolean) return 'boolean';
  if (u instanceof z.ZodEnum) return (u.options as string[]).map((o) => `\`${o}\``).join(' \\| ');
  if (u instanceof z.ZodLiteral) return `\`${String(u.value)}\``;
  if (u instanceof z.ZodUnion) return (u.options as z.ZodTypeAny[]).map(typeOf).join(' \\| ');
  if (u instanceof z.ZodArray) return `list of ${typeOf(u.element)}`;
  if (u instanceof z.ZodRecord) return `map of ${typeOf(u.valueSchema)}`;
  if (u instanceof z.ZodObject) return 'mapping';
  return 'value';
}

function defaultOf(s: z.ZodTypeAny): string {
  let x: z.ZodTypeAny = s;
  for (;;) {
    if (x instanceof z.ZodDefault) {
      const v: unknown = x._def.defaultValue();
      return typeof v === 'object' && v !== null && !Array.isArray(v) ? '(see below)' : `\`${JSON.stringify(v)}\``;
    }
    if (x instanceof z.ZodOptional || x instanceof z.ZodNullable) x = x.unwrap();
    else if (x instanceof z.ZodEffects) x = x.innerType();
    else return '(none)';
  }
}

/** Every setting of the schema, depth first; objects inside lists and maps are not descended. */
export function settings(schema: z.ZodTypeAny = configSchema, prefix = ''): SettingRow[] {
  const u = unwrap(schema);
  if (!(u instanceof z.ZodObject)) return [];
  const rows: SettingRow[] = [];
  for (const [k, v] of Object.entries(u.shape as Record<string, z.ZodTypeAny>)) {
    const path = prefix ? `${prefix}.${k}` : k;
    const inner = unwrap(v);
    if (inner instanceof z.ZodObject) rows.push(...settings(inner, path));
    else rows.push({ path, type: typeOf(v), default: defaultOf(v) });
  }
  return rows;
}

/** Per-kind ban rules are one row: `bans.kinds.<kind>.X`. */
function collapse(rows: SettingRow[]): SettingRow[] {
  const out: SettingRow[] = [];
  for (const r of rows) {
    const path = r.path.replace(/^bans\.kinds\.[A-Za-z]+\./, 'bans.kinds.<kind>.');
    if (!out.some((o) => o.path === path)) out.push({ ...r, path, default: path === r.path ? r.default : '(per kind, see BANS-AND-ALERTS.md)' });
  }
  return out;
}

/** What each setting means; a setting missing here fails tests/config-doc.test.ts. */
export const MEANINGS: Record<string, string> = {
  dataDir: 'Data folder: keys, server database, club stores, bans, outbox, backups (env COMMUSIC_DATA, flag --data).',
  listen: 'Client protocol address HOST:PORT, IPv6 in brackets (env COMMUSIC_LISTEN, flag --listen). Restart to change.',
  logLevel: 'Least severity logged (env COMMUSIC_LOG_LEVEL, flag --log-level); reloadable on SIGHUP.',
  logFile: 'Also write the log to this file (env COMMUSIC_LOG_FILE); reopened on SIGUSR1 for logrotate (deploy/logrotate.conf).',
  logFormat: 'Log line format on stderr and in logFile: json (one object a line) or text (TIME LEVEL message key=value) (env COMMUSIC_LOG_FORMAT, flag --log-format).',
  'limits.maxConnections': 'Open connections in all; beyond it new ones are closed at once.',
  'limits.maxPendingHandshakes': 'Connections still in the handshake, in all (OpenSSH MaxStartups "full").',
  'limits.earlyDropStart': 'Pending handshakes at which random early drop starts (MaxStartups "start").',
  'limits.earlyDropRate': 'Drop probability at earlyDropStart, rising to 1 at maxPendingHandshakes (MaxStartups "rate").',
  'limits.maxPendingHandshakesPerIp': 'Pending handshakes per source address.',
  'limits.maxPendingHandshakesPerPrefix': 'Pending handshakes per IPv4 /limitPrefixV4 or IPv6 /limitPrefixV6.',
  'limits.maxPreLogin': 'Established sessions not logged in yet, in all.',
  'limits.maxPreLoginPerIp': 'Sessions not logged in yet per source address.',
  'limits.maxPreLoginPerPrefix': 'Sessions not logged in yet per prefix.',
  'limits.limitPrefixV4': 'IPv4 prefix length the per-prefix limits count by.',
  'limits.limitPrefixV6': 'IPv6 prefix length the per-prefix limits count by.',
  'limits.handshakeTimeoutMs': 'Whole deadline for the handshake from accept, milliseconds; bytes do not extend it.',
  'limits.recordTimeoutMs': 'Whole deadline for one record from its first byte to its last, milliseconds.',
  'limits.loginTimeoutMs': 'Deadline for logging in after the handshake, milliseconds.',
  'limits.idleTimeoutMs': 'A logged-in session with no request for this long is closed, milliseconds.',
  'limits.requestTimeoutMs': 'Longest time one request may take, milliseconds.',
  'limits.passwordHashConcurrency': 'scrypt password hashes running at once; each holds 128 MiB of memory, and each core runs one. Restart to change.',
  'limits.passwordHashQueuedPerSource': 'Password hashes one source address (IPv6: its /64) may have waiting; one more is answered BUSY. Hashes are taken round-robin between addresses. Restart to change.',
  'limits.shutdownGraceMs': 'On SIGTERM, how long running requests may finish, milliseconds.',
  'limits.writeHighWaterBytes': 'Pause reading a connection while this many bytes wait to be written to it.',
  'health.enabled': 'Serve the HTTPS health and metrics endpoint.',
  'health.listen': 'Health endpoint address HOST:PORT (env COMMUSIC_HEALTH_LISTEN, flag --health-listen). Restart to change.',
  'health.certFile': "Operator's PEM certificate; without it a self-signed one lives in <data>/tls/. Goes with keyFile.",
  'health.keyFile': "Operator's PEM private key for certFile.",
  'health.allowCidrs': 'Addresses that may read /metrics without a token.',
  'health.bearerToken': 'Token that opens /metrics from anywhere (at least 16 characters; prefer tokenFile).',
  'health.tokenFile': 'File holding the /metrics bearer token.',
  'web.listen': 'Web application address HOST:PORT (env COMMUSIC_WEB_LISTEN, flag --web-listen); absent: no web application (docs/WEB.md). Restart to change.',
  'web.certFile': "Operator's PEM certificate of the web application; without it the health endpoint's self-signed one in <data>/tls/ is used. Goes with keyFile; reloaded on SIGHUP.",
  'web.keyFile': "Operator's PEM private key for web.certFile (mode 0600).",
  'web.idleTimeoutMs': 'A web session unused this long ends (ms); limits.idleTimeoutMs applies to the login behind it too, the shorter wins.',
  'web.absoluteTimeoutMs': 'A web session ends this long after its login, used or not (ms).',
  'web.maxSessions': 'Logged-in web sessions at most; the longest-idle one makes room.',
  'bans.enabled': 'False: violations are still logged and mailed, nobody is banned.',
  'bans.banTime': 'First ban length (duration such as 1h, or milliseconds).',
  'bans.banTimeFactor': 'Each repeated ban lasts this factor longer than the one before.',
  'bans.maxBanTime': 'Longest ban.',
  'bans.forgetAfter': 'Offender history older than this (since the last ban) starts again at level 1.',
  'bans.ipv4Prefix': 'IPv4 sources are grouped by this prefix (32: each address on its own).',
  'bans.ipv6Prefix': 'IPv6 sources are grouped by this prefix so one host cannot walk its /64.',
  'bans.exempt': 'Addresses and ranges never banned (still logged): office, VPN, monitoring probes.',
  'bans.maxTrackedSources': 'Sources tracked at once; the oldest are dropped beyond.',
  'bans.kinds.<kind>.maxRetry': 'Violations of this kind within findTime that ban the source.',
  'bans.kinds.<kind>.findTime': 'Window in which maxRetry violations are counted.',
  'bans.kinds.<kind>.banTime': 'Ban length for this kind instead of bans.banTime.',
  'mail.to': 'The service team addresses for alerts; required with smtp.',
  'mail.from': 'Sender of alert mails.',
  'mail.smtp.host': 'SMTP relay; without smtp, mails are written to <data>/outbox/sent-local/ and logged.',
  'mail.smtp.port': 'SMTP port (465 with secure).',
  'mail.smtp.secure': 'TLS from the first byte (port 465) instead of STARTTLS.',
  'mail.smtp.requireTLS': 'Refuse to send when STARTTLS is not offered.',
  'mail.smtp.rejectUnauthorized': "Verify the relay's certificate.",
  'mail.smtp.ca': 'PEM CA certificate for the relay.',
  'mail.smtp.auth.user': 'SMTP user.',
  'mail.smtp.auth.pass': 'SMTP password (keep the file mode 0600).',
  'mail.smtp.timeout': 'Connection and command timeout towards the relay.',
  'mail.groupInterval': 'Alerts of one group within this interval go out as one digest.',
  'mail.retry.initial': 'First retry delay for a mail the relay refused or could not take.',
  'mail.retry.max': 'Longest retry delay (doubling from initial).',
  'mail.maxLinesPerMail': 'Body lines per digest before the rest is summarised (every source still named).',
  'mail.serverName': 'Server name in subjects and bodies; default the host name.',
  'backups.enabled': 'Run the nightly backup (the operator commands work either way).',
  'backups.destinations': 'Where archives go: local folders (relative to the data folder) and SFTP targets; see BACKUPS.md.',
  'backups.time': 'Local time of the nightly run, HH:MM.',
  'backups.timezone': "IANA time zone of backups.time; default the server's.",
  'backups.parallelism': 'Clubs archived at once.',
  'backups.retention.last': 'Keep the newest N archives per club regardless of age.',
  'backups.retention.daily': 'Keep one archive per day for this many days.',
  'backups.retention.weekly': 'Keep one archive per week for this many weeks.',
  'backups.retention.monthly': 'Keep one archive per month for this many months.',
  'backups.retention.yearly': 'Keep one archive per year for this many years.',
  'backups.retryAfter': 'Retry a destination that was down after this long.',
  'backups.mail.maxBytes': 'Archives above this size are not mailed: the club gets a notice, the operator an alert.',
  'storeCache.maxOpen': 'Club stores open at once; auto takes what open files and memory allow (env COMMUSIC_STORE_CACHE_MAX_OPEN). Restart to change.',
  'diag.echoStream': 'Offer the diag.echoStream command (echoes an upload back; benchmarks and tests). Off on production servers.',
  'storeCache.memoryBudgetMiB': 'Memory the open stores may take (about 0.4 MiB each); default a quarter of the memory limit.',
  'cluster.etcd': 'Client URLs of the etcd members, all http:// or all https:// (flag --cluster-etcd URL[,URL...]); absent `cluster`: a single server (docs/CLUSTER.md). Restart to change.',
  'cluster.nodeId': "This server's id in the cluster (flag --node-id): a-z, 0-9 and '-', at most 64; unique among live members.",
  'cluster.advertise': 'HOST:PORT clients are redirected to (flag --advertise); default: the listen address.',
  'cluster.leaseTtlSec': "Member lease in seconds: a dead server's clubs are served again about this long after it died; keep synchronous work below a third of it.",
  'cluster.callTimeoutMs': 'Deadline of each etcd call; bounds the write stall when the etcd leader fails.',
  'cluster.standbys': 'Warm standbys per club (each holds an encrypted replica).',
  'cluster.logKeepEntries': "Entries of a club's log kept in etcd below its slowest standby and its head; older ones are trimmed (a standby further behind starts from a snapshot). docs/CLUSTER.md.",
  'cluster.compactAfterSec': "The placement leader compacts etcd's history older than this (trimmed entries, deleted clubs' keys); 0: etcd's own --auto-compaction is used instead (OPERATIONS.md).",
  'cluster.prefix': 'Key prefix of this cluster in etcd, ending in /.',
  'cluster.tls.caFile': 'PEM of the CA that signed the etcd members (production: OPERATIONS.md "etcd with TLS").',
  'cluster.tls.certFile': "PEM client certificate for etcd's --client-cert-auth.",
  'cluster.tls.keyFile': 'PEM key of the client certificate (mode 0600).',
};

/** The whole docs/CONFIG.md text. */
export function renderConfigDoc(): string {
  const rows = collapse(settings());
  const esc = (t: string) => t.replace(/\|/g, '\\|');
  return [
    '# Configuration reference',
    '',
    '<!-- Generated from the schema in daemon/main/config.ts by daemon/main/config-doc.ts: do not edit by hand.',
    '     Regenerate: npm run build && node dist/daemon/main/config-doc.js > docs/CONFIG.md -->',
    '',
    'The daemon reads, each overriding the one before: the defaults below, the configuration file',
    '(`--config FILE` or `COMMUSIC_CONFIG`; YAML with `#` comments, JSON files read as they are), the',
    '`COMMUSIC_*` environment variables named below, then command-line flags. `commusicd --check-config`',
    'validates all of them and exits 0 or 1; an error names the file, line and column, and suggests',
    'the nearest known name for a misspelt setting. Durations are a number of milliseconds or text',
    'such as `90s`, `15m`, `2h`, `7d`.',
    '',
    '```yaml',
    '# /etc/commusic/config.yaml',
    'dataDir: /var/lib/commusic',
    'listen: 0.0.0.0:7443',
    'mail:',
    '  to: [ops@example.org]',
    '```',
    '',
    '| setting | type | default | meaning |',
    '|---|---|---|---|',
    ...rows.map((r) => `| \`${r.path}\` | ${r.type} | ${esc(r.default)} | ${esc(MEANINGS[r.path] ?? '')} |`),
    '',
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) process.stdout.write(renderConfigDoc());
