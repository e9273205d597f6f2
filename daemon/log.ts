import winston from 'winston';
import { safeJsonText } from './neutralise.js';

export type Logger = winston.Logger;

export interface LogOptions {
  level?: string;
  /** Write JSON lines to this file as well as to stderr. */
  file?: string;
  /** Silence all output (tests). */
  silent?: boolean;
}

/**
 * Structured logs. Callers log codes, ids and addresses, never messages from peers, secrets
 * or personal data; the redaction below is a second line of defence, not the first.
 */
const SECRET_KEYS = /pass(word|phrase)?|secret|key|token|iban|authorization/i;

const redact = winston.format((info) => {
  for (const k of Object.keys(info)) {
    if (SECRET_KEYS.test(k) && k !== 'fingerprint' && k !== 'keyFile') info[k] = '[redacted]';
  }
  return info;
});

/** The finished JSON line: bidi overrides and C1 controls a peer put in a field, escaped too. */
const MESSAGE = Symbol.for('message');
const safeLine = winston.format((info) => {
  const line = (info as Record<symbol, unknown>)[MESSAGE];
  if (typeof line === 'string') (info as Record<symbol, unknown>)[MESSAGE] = safeJsonText(line);
  return info;
});

export function createLogger(opts: LogOptions = {}): Logger {
  const transports: winston.transport[] = [
    new winston.transports.Stream({ stream: process.stderr }),
  ];
  if (opts.file) transports.push(new winston.transports.File({ filename: opts.file }));
  return winston.createLogger({
    level: opts.level ?? 'info',
    silent: opts.silent ?? false,
    format: winston.format.combine(redact(), winston.format.timestamp(), winston.format.json(), safeLine()),
    transports,
  });
}

/** A logger that discards everything, for tests and library use. */
export function nullLogger(): Logger {
  return createLogger({ silent: true });
}
