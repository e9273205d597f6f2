import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { dataPaths } from '../daemon/main/config.js';
import { callControl } from '../daemon/ops/control-socket.js';
import { createLogger } from '../daemon/common/log.js';
import { AlertMailer, type MailerConfig } from '../daemon/mail/mailer.js';
import { Monitor, formatMs, parseTargets, type MonitorEvent } from '../daemon/monitoring/monitor.js';
import { parseDuration } from '../daemon/bans/ban-policy.js';
import { formatStatus, type StatusReport } from '../daemon/monitoring/status-ops.js';
import { fail, usage } from './cli-util.js';
import { neutraliseBlock, neutraliseDeep, safeJson } from '../daemon/common/neutralise.js';

/**
 * `commusicctl monitor` (the availability probe, meant to run at two sites) and
 * `commusicctl status` (figures from the running daemon). Registered on the main program by
 * registerMonitorCommands().
 */
interface MonitorFlags {
  target: string;
  fingerprint: string;
  interval: string;
  failures: string;
  timeout?: string;
  site?: string;
  spool: string;
  mailConfig?: string;
  mailTo?: string;
  mailFrom?: string;
  smtp?: string;
  smtpTls?: boolean;
  smtpUser?: string;
  smtpCa?: string;
  smtpNoStarttls?: boolean;
  once?: boolean;
  json?: boolean;
  quiet?: boolean;
}

function mailerConfig(o: MonitorFlags): MailerConfig {
  let cfg: Record<string, unknown> = {};
  if (o.mailConfig) {
    try {
      cfg = JSON.parse(readFileSync(o.mailConfig, 'utf8')) as Record<string, unknown>;
    } catch {
      fail(`cannot read mail configuration ${o.mailConfig} (JSON expected)`);
    }
  }
  if (o.mailTo) cfg.to = o.mailTo.split(',').map((s) => s.trim()).filter(Boolean);
  if (o.mailFrom) cfg.from = o.mailFrom;
  if (o.smtp) {
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+))(?::(\d{1,5}))?$/.exec(o.smtp);
    if (!m) usage(`--smtp "${o.smtp}" is not HOST[:PORT]`);
    const smtp: Record<string, unknown> = { ...((cfg.smtp as Record<string, unknown> | undefined) ?? {}), host: m[1] ?? m[2] };
    if (m[3]) smtp.port = Number(m[3]);
    else if (o.smtpTls) smtp.port = 465;
    if (o.smtpTls) smtp.secure = true;
    if (o.smtpNoStarttls) smtp.requireTLS = false;
    if (o.smtpCa) smtp.ca = readFileSync(o.smtpCa, 'utf8');
    if (o.smtpUser) smtp.auth = { user: o.smtpUser, pass: process.env.COMMUSIC_SMTP_PASSWORD ?? '' };
    cfg.smtp = smtp;
  }
  // The probe site names itself in the mails' server field.
  cfg.serverName ??= `monitor@${o.site ?? hostname()}`;
  return cfg as MailerConfig;
}

function describe(e: MonitorEvent): string {
  const r = e.result.ok ? `ok ${e.result.rttMs.toFixed(1)} ms` : `FAILED (${e.state.failures}) ${e.result.error}`;
  const t = e.transition ? ` -> ${e.transition.kind === 'outage' ? 'DOWN, outage alert sent' : 'UP again, recovery alert sent'}` : '';
  return `${new Date(e.time).toISOString()} ${e.target.label} ${r}${t}`;
}

export function registerMonitorCommands(program: Command, dataDir: () => string): void {
  program
    .command('monitor')
    .description('availability probe: handshake + ping against each target every interval; mails the service team on outage and recovery')
    .requiredOption('--target <host:port,...>', 'servers to probe, comma-separated')
    .requiredOption('--fingerprint <fp,...>', 'server key fingerprint (one for all targets, or one per target)')
    .option('--interval <duration>', 'time between probes (e.g. 60s, 200ms)', '60s')
    .option('--failures <n>', 'consecutive failed probes before the outage mail', '3')
    .option('--timeout <duration>', 'time limit per probe (default: half the interval, at most 10s)')
    .option('--site <name>', 'name of this probe site, shown in every mail (default: host name)')
    .option('--spool <dir>', 'folder for the persistent mail outbox', './commusic-monitor')
    .option('--mail-config <file>', 'JSON mailer configuration (to, from, smtp, groupInterval, ...)')
    .option('--mail-to <addr,...>', 'service team addresses')
    .option('--mail-from <addr>', 'sender address')
    .option('--smtp <host[:port]>', 'SMTP relay (without it, mails are written to <spool>/outbox/sent-local/)')
    .option('--smtp-tls', 'implicit TLS (port 465)')
    .option('--smtp-user <user>', 'SMTP user; the password comes from COMMUSIC_SMTP_PASSWORD')
    .option('--smtp-ca <file>', 'extra CA certificate (PEM) for the SMTP server')
    .option('--smtp-no-starttls', 'allow a relay without STARTTLS (a local relay on a trusted link only)')
    .option('--once', 'probe every target once, print the result and exit (0 all up, 1 a target down; 2 is a usage error); sends no mail')
    .option('--json', 'print one JSON line per probe')
    .option('--quiet', 'print state changes only')
    .action(async (o: MonitorFlags) => {
      // A malformed flag is a usage error (exit 2), never a probe failure that would page someone.
      let targets;
      for (const fp of o.fingerprint.split(',').map((s) => s.trim()).filter(Boolean)) {
        if (!/^[0-9a-f]{64}$/i.test(fp.replace(/:/g, ''))) usage(`--fingerprint "${fp.slice(0, 80)}" is not a SHA-256 fingerprint (64 hex digits, from "commusicctl keys show")`);
      }
      try {
        targets = parseTargets(o.target, o.fingerprint);
      } catch (e) {
        usage((e as Error).message);
      }
      const duration = (flag: string, v: string): number => {
        try {
          return parseDuration(v);
        } catch (e) {
          usage(`${flag}: ${(e as Error).message}`);
        }
      };
      const intervalMs = duration('--interval', o.interval);
      const failures = Number(o.failures);
      if (!Number.isInteger(failures) || failures < 1 || failures > 1000) usage('--failures must be an integer from 1 to 1000');
      const timeoutMs = o.timeout ? duration('--timeout', o.timeout) : undefined;
      const site = o.site ?? hostname();
      const print = (e: MonitorEvent) => {
        if (o.quiet && !e.transition) return;
        if (o.json) {
          process.stdout.write(`${safeJson({ time: new Date(e.time).toISOString(), target: e.target.label, ok: e.result.ok, ...(e.result.ok ? { rttMs: e.result.rttMs } : { error: e.result.error }), status: e.state.status, failures: e.state.failures, transition: e.transition?.kind ?? null })}\n`);
        } else process.stdout.write(`${neutraliseBlock(describe(e))}\n`);
      };
      if (o.once) {
        const m = new Monitor({ targets, intervalMs, failures: 1, site, sink: { alert: () => undefined }, onProbe: (e) => print({ ...e, transition: undefined } as MonitorEvent), ...(timeoutMs ? { timeoutMs } : {}) });
        const events = await m.runRound();
        process.exitCode = events.every((e) => e.result.ok) ? 0 : 1; // 2 is kept for usage errors (a typo must not look like an outage)
        return;
      }
      const logger = createLogger({ level: 'warn' });
      const mailer = await AlertMailer.open({ dataDir: resolve(o.spool), config: mailerConfig(o), logger });
      const monitor = new Monitor({ targets, intervalMs, failures, site, sink: mailer, logger, onProbe: print, ...(timeoutMs ? { timeoutMs } : {}) });
      process.stdout.write(neutraliseBlock(`monitoring ${targets.map((t) => t.label).join(', ')} every ${formatMs(intervalMs)} from ${site}; outage mail after ${failures} failed probes\n`));
      monitor.start();
      await new Promise<void>((done) => {
        const stop = () => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          void monitor
            .stop()
            .then(() => Promise.race([mailer.flush(), new Promise((r) => setTimeout(r, 5000).unref())]))
            .then(() => mailer.close())
            .finally(done);
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
    });

  program
    .command('status')
    .description('uptime, connections, sessions, open stores, active bans, last backups and mail outbox of the running daemon')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const sock = dataPaths(dataDir()).controlSocket;
      const res = await callControl(sock, 'status', {}, 10_000);
      if (!res) {
        process.stderr.write(`commusicd is not running (no daemon answers on ${sock})\n`);
        process.exit(3);
      }
      const report = res.result as StatusReport;
      process.stdout.write(o.json ? `${safeJson(report)}\n` : neutraliseBlock(formatStatus(neutraliseDeep(report))));
    });
}
