/**
 * The alert mailer: tells the service team at once about unauthorised access, key-file
 * tampering and outages, without drowning them.
 *
 * Grouping, in the spirit of Alertmanager: the first alert of a group ('ban', 'key-file',
 * 'outage', ...) is mailed at once; later alerts of the group within `groupInterval` are gathered
 * and mailed as one digest at the end of the interval, naming every source and counting the
 * violations. A flood of thousands of violations from 50 addresses thus makes one mail for the
 * first ban and one digest per interval naming the other 49.
 *
 * Delivery goes through the persistent outbox (outbox.ts): an alert is on disk before `alert()`
 * resolves, either as a queued mail or as a gathered digest item, and a queued mail leaves the
 * disk only after the SMTP server accepted it. Failures are retried with capped exponential
 * backoff and jitter, forever (the outbox length is exported for monitoring); a restart resends
 * whatever is queued. Delivery is one message at a time, so no mail is sent twice in the normal
 * case.
 *
 * The at-least-once window: if the process dies after the SMTP server accepted a mail but before
 * its queue file is deleted, the mail is sent again after the restart, with the same Message-ID,
 * so the receiving side can drop the duplicate. Likewise a crash between queuing a digest and
 * deleting its gathered items sends those items again in the next digest.
 *
 * Bodies contain what the callers put in `lines`: IP addresses, user names, club ids, violation
 * kinds and log-safe details; never passwords, keys or decrypted club data.
 */
import { composeAlertMail } from './compose.js';
import os from 'node:os';
import path from 'node:path';
import nodemailer from 'nodemailer';
import { nullLogger, type Logger } from '../common/log.js';
import { Outbox, newOutboxId, type OutboxMessage } from './outbox.js';
import { Alert, MailerConfigSchema, MailerOptions, MailerSettings } from './mail-config.js';

export { SmtpConfigSchema, MailerConfigSchema, type MailerConfig, type MailerSettings, type Severity, type Alert, type MailerOptions } from './mail-config.js';

interface GroupState {
  lastSentAt: number;
  pending: { id: string; alert: Alert & { time: number } }[];
  timer: NodeJS.Timeout | undefined;
}

export const OUTBOX_DIR = 'outbox';

export class AlertMailer {
  readonly settings: MailerSettings;
  readonly outbox: Outbox;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly random: () => number;
  private readonly transport: nodemailer.Transporter;
  /** "host:port" of the SMTP server, named in every mail-retry log line. */
  private readonly smtpTarget: string;
  private readonly local: boolean;
  private readonly server: string;
  private readonly groups = new Map<string, GroupState>();
  private pumping: Promise<void> | undefined;
  private pumpAgain = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  private blockedUntil = 0;
  private closed = false;
  private readonly digesting = new Set<Promise<void>>();
  private readonly inflight = new Set<Promise<void>>();

  private constructor(opts: MailerOptions, settings: MailerSettings, outbox: Outbox) {
    this.settings = settings;
    this.outbox = outbox;
    this.log = opts.logger ?? nullLogger();
    this.now = opts.now ?? Date.now;
    this.random = opts.random ?? Math.random;
    this.server = settings.serverName ?? os.hostname();
    const smtp = settings.smtp;
    this.local = !smtp;
    this.smtpTarget = smtp ? `${smtp.host.includes(':') ? `[${smtp.host}]` : smtp.host}:${smtp.port}` : 'local outbox';
    this.transport = smtp
      ? nodemailer.createTransport({
          host: smtp.host,
          port: smtp.port,
          secure: smtp.secure,
          requireTLS: smtp.requireTLS,
          auth: smtp.auth,
          tls: { rejectUnauthorized: smtp.rejectUnauthorized, ca: smtp.ca, minVersion: 'TLSv1.2' },
          connectionTimeout: smtp.timeout,
          greetingTimeout: smtp.timeout,
          socketTimeout: smtp.timeout,
        })
      : nodemailer.createTransport({ streamTransport: true, buffer: true, newline: 'unix' });
  }

  /**
   * Open the outbox under `<dataDir>/outbox/`, resend whatever a previous run left queued, and
   * mail gathered digest items at once. Throws a ZodError on a bad config.
   */
  static async open(opts: MailerOptions): Promise<AlertMailer> {
    const settings = MailerConfigSchema.parse(opts.config ?? {});
    const outbox = await Outbox.open(path.join(opts.dataDir, OUTBOX_DIR));
    const m = new AlertMailer(opts, settings, outbox);
    await m.restoreGathered();
    if (m.outbox.length > 0) {
      m.log.info('alert outbox has mail from a previous run', { event: 'mail-resume', queued: m.outbox.length });
    }
    m.kick();
    return m;
  }

  /** Mails waiting for delivery (for metrics). */
  get outboxLength(): number {
    return this.outbox.length;
  }

  /** Alerts gathered for the next digests. */
  get gatheredLength(): number {
    let n = 0;
    for (const g of this.groups.values()) n += g.pending.length;
    return n;
  }

  /**
   * Raise an alert. Resolves once it is durably in the outbox: as a mail of its own if it is
   * the first of its group within the interval, otherwise as an item of the next digest.
   */
  alert(a: Alert): Promise<void> {
    if (this.closed) return Promise.reject(new Error('alert mailer is closed'));
    const p = this.queueAlert(a).finally(() => this.inflight.delete(p));
    this.inflight.add(p);
    return p;
  }

  private async queueAlert(a: Alert): Promise<void> {
    const now = this.now();
    const alert = { ...a, time: a.time ?? now };
    const g = this.groups.get(a.group);
    if (!g || (g.pending.length === 0 && now - g.lastSentAt >= this.settings.groupInterval)) {
      if (g?.timer) clearTimeout(g.timer);
      this.groups.set(a.group, { lastSentAt: now, pending: [], timer: undefined });
      await this.outbox.enqueue(this.compose(a.group, [alert], now));
      this.kick();
      return;
    }
    const id = newOutboxId(now);
    // On disk first, then in the digest: a digest never drops an item whose file is still coming.
    await this.outbox.gatherAdd({ id, group: a.group, createdAt: now, item: alert });
    const cur = this.groups.get(a.group) ?? g;
    cur.pending.push({ id, alert });
    this.scheduleDigest(a.group, cur);
  }

  /**
   * Queue a mail to arbitrary recipients (e.g. a club's nightly backup), with optional file
   * attachments copied into the outbox first. Resolves once mail and attachments are durably on
   * disk; delivery, retries and the exactly-once-in-the-normal-case rule are the alerts' own.
   */
  async send(m: { group: string; to: readonly string[]; subject: string; text: string; attachments?: ReadonlyArray<{ filename: string; path: string; contentType?: string }> }): Promise<string> {
    if (this.closed) throw new Error('alert mailer is closed');
    const now = this.now();
    const id = newOutboxId(now);
    const attachments = [];
    for (const [i, a] of (m.attachments ?? []).entries()) {
      const file = await this.outbox.stageAttachment(a.path, `${id}-${i}`);
      attachments.push({ filename: a.filename, file, contentType: a.contentType ?? 'application/octet-stream' });
    }
    await this.outbox.enqueue({
      id,
      createdAt: now,
      group: m.group,
      from: this.settings.from,
      to: [...m.to],
      subject: m.subject,
      text: m.text.endsWith('\n') ? m.text : `${m.text}\n`,
      messageId: `<${id}.${m.group.replace(/[^A-Za-z0-9-]/g, '')}@commusic.mail>`,
      attempts: 0,
      ...(attachments.length ? { attachments } : {}),
    });
    this.kick();
    return id;
  }

  /** Mail all gathered digests now and try to deliver everything queued, ignoring backoff. */
  async flush(): Promise<void> {
    await Promise.allSettled([...this.inflight]);
    for (const group of [...this.groups.keys()]) await this.digest(group);
    await Promise.all([...this.digesting]);
    await this.pump(true);
  }

  /**
   * Stop timers and wait for the delivery in progress. Gathered items and undelivered mail stay
   * on disk for the next start.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    await Promise.allSettled([...this.inflight]);
    this.closed = true;
    for (const g of this.groups.values()) if (g.timer) clearTimeout(g.timer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    await Promise.all([...this.digesting]);
    while (this.pumping) await this.pumping;
    this.transport.close();
  }

  private scheduleDigest(group: string, g: GroupState): void {
    if (g.timer || this.closed) return;
    const due = Math.max(0, g.lastSentAt + this.settings.groupInterval - this.now());
    g.timer = setTimeout(() => {
      g.timer = undefined;
      const p = this.digest(group)
        .catch((err: unknown) => {
          this.log.error('alert digest failed', { event: 'mail-error', code: codeOf(err) });
        })
        .finally(() => this.digesting.delete(p));
      this.digesting.add(p);
    }, due);
    g.timer.unref();
  }

  private async digest(group: string): Promise<void> {
    const g = this.groups.get(group);
    if (!g || g.pending.length === 0) return;
    if (g.timer) {
      clearTimeout(g.timer);
      g.timer = undefined;
    }
    const items = g.pending;
    g.pending = [];
    const now = this.now();
    g.lastSentAt = now;
    await this.outbox.enqueue(this.compose(group, items.map((i) => i.alert), now));
    await this.outbox.gatherRemove(items.map((i) => i.id));
    this.kick();
  }

  private async restoreGathered(): Promise<void> {
    const files = await this.outbox.gatherList<Alert & { time: number }>();
    for (const f of files) {
      let g = this.groups.get(f.group);
      if (!g) {
        g = { lastSentAt: Number.NEGATIVE_INFINITY, pending: [], timer: undefined };
        this.groups.set(f.group, g);
      }
      g.pending.push({ id: f.id, alert: f.item });
    }
    for (const [group, g] of this.groups) this.scheduleDigest(group, g);
  }

  /** One alert: a mail of its own. Several: a digest naming every source (compose.ts). */
  private compose(group: string, alerts: readonly (Alert & { time: number })[], now: number): OutboxMessage {
    return composeAlertMail(this.server, this.settings, group, alerts, now);
  }

  /** Start a delivery round soon (coalesced). */
  private kick(): void {
    if (this.closed) return;
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    void this.pump(false);
  }

  /** Deliver queued mail, one message at a time. `force` ignores the backoff. */
  private pump(force: boolean): Promise<void> {
    if (this.pumping) {
      this.pumpAgain = true;
      // A forced flush waits for the running round and then runs one of its own.
      return force ? this.pumping.then(() => this.pump(true)) : this.pumping;
    }
    const run = (async () => {
      do {
        this.pumpAgain = false;
        if (!force && this.now() < this.blockedUntil) break;
        for (const msg of this.outbox.pending()) {
          if (this.closed && !force) break;
          const ok = await this.deliver(msg);
          if (ok === 'retry-later') break;
        }
      } while (this.pumpAgain && !this.closed);
    })();
    this.pumping = run.finally(() => {
      this.pumping = undefined;
      this.scheduleRetry();
    });
    return this.pumping;
  }

  private scheduleRetry(): void {
    if (this.closed || this.outbox.length === 0) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    const wait = Math.max(0, this.blockedUntil - this.now());
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.kick();
    }, wait);
    this.retryTimer.unref();
  }

  private async deliver(msg: OutboxMessage): Promise<'sent' | 'rejected' | 'retry-later'> {
    const mail = {
      from: msg.from,
      to: [...msg.to],
      subject: msg.subject,
      text: msg.text,
      messageId: msg.messageId,
      date: new Date(msg.createdAt),
      headers: { 'X-ComMusic-Alert-Group': msg.group },
      ...(msg.attachments?.length
        ? { attachments: msg.attachments.map((a) => ({ filename: a.filename, path: this.outbox.attachmentPath(a.file), contentType: a.contentType })) }
        : {}),
    };
    try {
      const info = (await this.transport.sendMail(mail)) as { message?: Buffer; accepted?: unknown[] };
      if (this.local) {
        const file = await this.outbox.writeLocal(msg.id, info.message ?? Buffer.alloc(0));
        this.log.warn('alert written to the local outbox (no SMTP configured)', {
          event: 'mail-local',
          file,
          subject: msg.subject,
        });
      } else {
        this.log.info('alert mailed', {
          event: 'mail-sent',
          messageId: msg.messageId,
          subject: msg.subject,
          attempts: msg.attempts + 1,
        });
      }
      // Accepted: from here until the unlink is on disk is the at-least-once window.
      await this.outbox.remove(msg.id);
      this.failures = 0;
      this.blockedUntil = 0;
      return 'sent';
    } catch (err) {
      const at = this.now();
      const code = codeOf(err);
      const responseCode = (err as { responseCode?: number }).responseCode;
      await this.outbox.recordFailure(msg.id, `${code}${responseCode ? ` ${responseCode}` : ''}`, at);
      this.failures++;
      const delay = this.backoff(this.failures);
      this.blockedUntil = at + delay;
      this.log.error('alert mail not delivered; will retry', {
        event: 'mail-retry',
        smtp: this.smtpTarget,
        code,
        responseCode,
        messageId: msg.messageId,
        attempts: msg.attempts + 1,
        retryInMs: delay,
        queued: this.outbox.length,
      });
      // A permanent refusal of this message (5xx) does not mean the server is down: try the
      // next one. Anything else (connection refused, timeout, 4xx) waits for the backoff.
      return responseCode !== undefined && responseCode >= 500 ? 'rejected' : 'retry-later';
    }
  }

  /** Capped exponential backoff with equal jitter: [d/2, d) for d = initial * 2^(n-1) <= max. */
  private backoff(failures: number): number {
    const { initial, max } = this.settings.retry;
    const d = Math.min(max, initial * 2 ** Math.min(30, failures - 1));
    return Math.round(d / 2 + (d / 2) * this.random());
  }
}

function codeOf(err: unknown): string {
  const c = (err as { code?: unknown }).code;
  return typeof c === 'string' ? c : 'ERR';
}
