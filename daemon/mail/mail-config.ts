/**
 * The alert mail configuration (SMTP, recipients, grouping interval, retry, digest size) and the
 * shape of an alert.
 */
import { type AlertKind } from './alert-catalogue.js';
import { z } from 'zod';
import { DurationSchema } from '../bans/ban-policy.js';
import { type Logger } from '../common/log.js';

export const SmtpConfigSchema = z
  .object({
    host: z.string().min(1),
    port: z.number().int().min(1).max(65535).default(587),
    /** Implicit TLS from the first byte (usually port 465). */
    secure: z.boolean().default(false),
    /** Refuse to send unless the server offers STARTTLS (when not `secure`). */
    requireTLS: z.boolean().default(true),
    /** Verify the server certificate. */
    rejectUnauthorized: z.boolean().default(true),
    /** Extra CA certificates (PEM) to trust, e.g. a company CA. */
    ca: z.string().optional(),
    auth: z.object({ user: z.string().min(1), pass: z.string() }).strict().optional(),
    /** Connection, greeting and socket timeout. */
    timeout: DurationSchema.default('30s'),
  })
  .strict();

export const MailerConfigSchema = z
  .object({
    /** The service team. Required with SMTP; without SMTP the .eml files are addressed to them. */
    to: z.array(z.string().email()).default([]),
    from: z.string().min(3).default('ComMusic alerts <commusic-alerts@localhost>'),
    /** Without SMTP: the embedded default, mails are written to <outbox>/sent-local/ and logged. */
    smtp: SmtpConfigSchema.optional(),
    groupInterval: DurationSchema.default('5m'),
    retry: z
      .object({ initial: DurationSchema.default('30s'), max: DurationSchema.default('1h') })
      .strict()
      .default({}),
    /** Body lines per digest before the rest is summarised (every source is still named). */
    maxLinesPerMail: z.number().int().min(10).max(100_000).default(2000),
    /** Server name in subjects and bodies; defaults to the host name. */
    serverName: z.string().optional(),
  })
  .strict()
  .refine((c) => !c.smtp || c.to.length > 0, { message: 'smtp needs at least one "to" address', path: ['to'] });

export type MailerConfig = z.input<typeof MailerConfigSchema>;
export type MailerSettings = z.output<typeof MailerConfigSchema>;

export type Severity = 'info' | 'warning' | 'critical';
export const SEVERITY_RANK: Record<Severity, number> = { info: 0, warning: 1, critical: 2 };

export interface Alert {
  /** Grouping key: 'ban', 'key-file', 'outage', ... */
  readonly group: string;
  /** Which alert this is (daemon/mail/alert-catalogue.ts): the mail says what it means and what helps. */
  readonly kind: AlertKind;
  readonly subject: string;
  readonly lines: readonly string[];
  readonly severity: Severity;
  /** Addresses or ranges this alert is about; a digest names all of them. */
  readonly sources?: readonly string[];
  /** Violations behind this alert; a digest sums them. */
  readonly violations?: number;
  /** When it happened (ms); defaults to the mailer's clock. */
  readonly time?: number;
}

export interface MailerOptions {
  /** The data folder; the outbox is `<dataDir>/outbox/`. */
  readonly dataDir: string;
  readonly config?: MailerConfig;
  readonly logger?: Logger;
  readonly now?: () => number;
  /** Jitter source in [0,1); tests make it deterministic. */
  readonly random?: () => number;
}

export function iso(t: number): string {
  return new Date(t).toISOString();
}
