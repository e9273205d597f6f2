import { SMTPServer, type SMTPServerOptions } from 'smtp-server';

/** A mail as the test SMTP server received it, headers unfolded and body decoded. */
export interface ReceivedMail {
  readonly subject: string;
  readonly messageId: string;
  readonly to: string[];
  readonly body: string;
  readonly raw: string;
}

export interface SmtpSink {
  readonly port: number;
  readonly mails: ReceivedMail[];
  /** Resolves when `pred` holds for the mails received, or rejects after `ms`. */
  waitFor(pred: (mails: ReceivedMail[]) => boolean, ms?: number): Promise<void>;
  close(): Promise<void>;
}

function decodeBody(headers: string, body: string): string {
  const cte = /^content-transfer-encoding:\s*(\S+)/im.exec(headers)?.[1]?.toLowerCase();
  if (cte === 'quoted-printable') {
    return body
      .replace(/=\r?\n/g, '')
      .replace(/=([0-9A-F]{2})/gi, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
  }
  if (cte === 'base64') return Buffer.from(body.replace(/\s+/g, ''), 'base64').toString('utf8');
  return body;
}

export function parseMail(raw: string): Omit<ReceivedMail, 'to'> {
  const split = raw.search(/\r?\n\r?\n/);
  const headers = raw.slice(0, split).replace(/\r?\n[ \t]+/g, ' ');
  const body = raw.slice(split).replace(/^\r?\n\r?\n/, '');
  const header = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, 'im').exec(headers)?.[1]?.trim() ?? '';
  return { subject: header('subject'), messageId: header('message-id'), body: decodeBody(headers, body), raw };
}

/**
 * A real SMTP server on 127.0.0.1 (port 0 unless given) that keeps what it receives. No TLS
 * (STARTTLS disabled), auth optional. `refuse` makes it answer MAIL FROM with that code while it
 * returns a number.
 */
export async function startSmtpSink(opts: { port?: number; refuse?: () => number | undefined } = {}): Promise<SmtpSink> {
  const mails: ReceivedMail[] = [];
  const waiters = new Set<() => void>();
  const options: SMTPServerOptions = {
    authOptional: true,
    disabledCommands: ['STARTTLS'],
    logger: false,
    onMailFrom(_address, _session, cb) {
      const code = opts.refuse?.();
      if (code) {
        const err = Object.assign(new Error('try again later'), { responseCode: code });
        cb(err);
        return;
      }
      cb();
    },
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const raw = Buffer.concat(chunks).toString('utf8');
        mails.push({ ...parseMail(raw), to: session.envelope.rcptTo.map((r) => r.address) });
        for (const w of waiters) w();
        cb();
      });
    },
  };
  const server = new SMTPServer(options);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => resolve());
  });
  const addr = server.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  return {
    port,
    mails,
    waitFor(pred, ms = 10_000) {
      if (pred(mails)) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const check = () => {
          if (pred(mails)) {
            clearTimeout(t);
            waiters.delete(check);
            resolve();
          }
        };
        const t = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out after ${ms} ms with ${mails.length} mails`));
        }, ms);
        waiters.add(check);
      });
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
