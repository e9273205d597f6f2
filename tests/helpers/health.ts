import { request } from 'node:https';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { X509Certificate } from 'node:crypto';

/**
 * HTTPS and TLS helpers for the health endpoint tests: a GET with a chosen source address and
 * token, and the fingerprint of the certificate a fresh TLS connection is shown.
 */
export interface HttpsResult {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

export function httpsGet(
  port: number,
  path: string,
  opts: { ca?: string; localAddress?: string; token?: string; method?: string; authorization?: string } = {},
): Promise<HttpsResult> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {};
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    if (opts.authorization) headers.authorization = opts.authorization;
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path,
        method: opts.method ?? 'GET',
        headers,
        agent: false,
        ...(opts.ca ? { ca: opts.ca, servername: 'localhost' } : { rejectUnauthorized: false }),
        ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
        timeout: 5000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

/** SHA-256 fingerprint of the certificate a new TLS connection to the port presents. */
export function peerFingerprint(port: number, extra: ConnectionOptions = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...extra }, () => {
      const raw = s.getPeerCertificate().raw;
      s.destroy();
      resolve(new X509Certificate(raw).fingerprint256);
    });
    s.on('error', reject);
    s.setTimeout(5000, () => s.destroy(new Error('timeout')));
  });
}

/**
 * Strict check of the Prometheus text exposition format (version 0.0.4): every line is a HELP,
 * a TYPE or a sample; every sample belongs to a family whose TYPE came before; names, label
 * sets and values are well formed; no family is declared twice. Returns the samples.
 */
export function parsePrometheus(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  const helps = new Set<string>();
  const name = '[a-zA-Z_:][a-zA-Z0-9_:]*';
  const labelName = '[a-zA-Z_][a-zA-Z0-9_]*';
  const labelValue = '"(?:[^"\\\\\\n]|\\\\[\\\\"n])*"';
  const sampleRe = new RegExp(`^(${name})(\\{(?:${labelName}=${labelValue}(?:,${labelName}=${labelValue})*,?)?\\})? (\\S+)(?: (-?\\d+))?$`);
  // Prometheus parses values with Go's strconv.ParseFloat, which takes Inf and NaN in any case
  // (prom-client prints "Nan" for an event-loop statistic before its first sample).
  const value = /^(?:[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|[+-]inf|nan)$/i;
  if (!text.endsWith('\n')) throw new Error('exposition must end with a newline');
  const lines = text.slice(0, -1).split('\n');
  lines.forEach((line, i) => {
    const where = `line ${i + 1}: ${line}`;
    if (line === '') return;
    let m: RegExpExecArray | null;
    if ((m = new RegExp(`^# HELP (${name}) (.*)$`).exec(line))) {
      if (helps.has(m[1]!)) throw new Error(`HELP twice, ${where}`);
      helps.add(m[1]!);
      return;
    }
    if ((m = new RegExp(`^# TYPE (${name}) (counter|gauge|histogram|summary|untyped)$`).exec(line))) {
      if (types.has(m[1]!)) throw new Error(`TYPE twice, ${where}`);
      types.set(m[1]!, m[2]!);
      return;
    }
    if (line.startsWith('#')) throw new Error(`bad comment, ${where}`);
    m = sampleRe.exec(line);
    if (!m) throw new Error(`bad sample, ${where}`);
    const metric = m[1]!;
    const family = [...types.keys()].find((f) => metric === f || ((types.get(f) === 'histogram' || types.get(f) === 'summary') && /^(_bucket|_sum|_count)$/.test(metric.slice(f.length)) && metric.startsWith(f)));
    if (!family) throw new Error(`sample without TYPE, ${where}`);
    if (!value.test(m[3]!)) throw new Error(`bad value, ${where}`);
    const key = `${metric}${m[2] ?? ''}`;
    if (samples.has(key)) throw new Error(`duplicate sample, ${where}`);
    samples.set(key, /nan/i.test(m[3]!) ? NaN : Number(m[3]!.replace(/inf$/i, 'Infinity')));
  });
  return samples;
}
