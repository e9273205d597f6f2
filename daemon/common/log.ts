import { closeSync, openSync, writeSync } from 'node:fs';
import { Writable } from 'node:stream';
import winston from 'winston';
import { neutralise, safeJsonText } from './neutralise.js';

export type Logger = winston.Logger;

export interface LogOptions {
  level?: string;
  /** Write JSON lines to this file as well as to stderr. */
  file?: string;
  /** Silence all output (tests). */
  silent?: boolean;
  /** `json` (one JSON object a line, the default) or `text` (TIME LEVEL message key=value). */
  format?: 'json' | 'text';
  /** Where the console lines go (default stderr); the daemon's plain status lines go to stdout. */
  stream?: NodeJS.WritableStream;
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

/** Text lines: "2026-11-30T05:00:00.000Z info message key=value ...", every value neutralised. */
const textLine = winston.format((info) => {
  const { level, message, timestamp, ...rest } = info as Record<string, unknown>;
  const fields = Object.entries(rest)
    .filter(([k]) => typeof k === 'string')
    .map(([k, v]) => `${k}=${neutralise(typeof v === 'string' ? (/\s/.test(v) ? JSON.stringify(v) : v) : JSON.stringify(v) ?? String(v))}`);
  (info as Record<symbol, unknown>)[MESSAGE] = [String(timestamp), String(level), neutralise(String(message)), ...fields].join(' ');
  return info;
});

/**
 * A log file that can be reopened (logrotate moves it away, then the daemon gets SIGUSR1 and
 * writes to a new file at the same path). Lines are appended with one write each, mode 0640.
 */
export class ReopenableFile extends winston.transports.Stream {
  private fd: number;
  constructor(readonly path: string) {
    // The Stream transport's own stream is never written to: log() below writes to the descriptor.
    super({ stream: new Writable({ write: (_c, _e, cb) => cb() }) });
    this.fd = openSync(path, 'a', 0o640);
  }
  override log(info: unknown, next: () => void): void {
    const line = (info as Record<symbol, unknown>)[MESSAGE];
    try {
      writeSync(this.fd, `${String(line)}\n`);
    } catch {
      // A full disk must not stop the daemon; stderr still carries the line.
    }
    next();
  }
  /** Opens the path anew (after rotation); the old descriptor is closed. */
  reopen(): void {
    const fresh = openSync(this.path, 'a', 0o640);
    const old = this.fd;
    this.fd = fresh;
    closeSync(old);
  }
  override close(): void {
    try {
      closeSync(this.fd);
    } catch {
      // already closed
    }
  }
}

export function createLogger(opts: LogOptions = {}): Logger {
  const transports: winston.transport[] = [new winston.transports.Stream({ stream: opts.stream ?? process.stderr })];
  if (opts.file) transports.push(new ReopenableFile(opts.file));
  const shape = opts.format === 'text' ? textLine() : winston.format.combine(winston.format.json(), safeLine());
  return winston.createLogger({
    level: opts.level ?? 'info',
    silent: opts.silent ?? false,
    format: winston.format.combine(redact(), winston.format.timestamp(), shape),
    transports,
  });
}

/** Reopens every log file of the logger (SIGUSR1, after logrotate moved the files away). */
export function reopenLogFiles(logger: Logger): number {
  let n = 0;
  for (const t of logger.transports) {
    if (t instanceof ReopenableFile) {
      t.reopen();
      n++;
    }
  }
  return n;
}

/** A logger that discards everything, for tests and library use. */
export function nullLogger(): Logger {
  return createLogger({ silent: true });
}
