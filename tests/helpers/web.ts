import { request } from 'node:https';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type Connection } from '../../client/connection.js';
import { loadConfig } from '../../daemon/main/config.js';
import { nullLogger } from '../../daemon/common/log.js';
import { startServer, type RunningServer } from '../../daemon/main/main.js';
import { selfSignedPaths } from '../../daemon/monitoring/tls-cert.js';

/**
 * A daemon with the web application on 127.0.0.1:0 (health endpoint off), and a small HTTPS
 * client with a cookie jar that pins the daemon's self-signed certificate and can send each
 * request from its own 127.0.0.x source address.
 */
export interface WebEnv {
  readonly server: RunningServer;
  readonly port: number;
  readonly ca: string;
  readonly dataDir: string;
  /** A protocol connection from a source address. */
  protocol(localAddress: string): Promise<Connection>;
  close(): Promise<void>;
}

export async function startWebEnv(web: Record<string, unknown> = {}): Promise<WebEnv> {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-web-'));
  const dataDir = join(dir, 'data');
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({ health: { enabled: false }, logLevel: 'error', web: { listen: '127.0.0.1:0', ...web } }));
  const server = await startServer(loadConfig({ file, flags: { dataDir, listen: '127.0.0.1:0' } }), { logger: nullLogger() });
  const port = server.web!.address().port;
  const ca = readFileSync(selfSignedPaths(dataDir).certFile, 'utf8');
  return {
    server,
    port,
    ca,
    dataDir,
    protocol: (localAddress) => connect({ host: '127.0.0.1', port: server.daemon.address().port, fingerprint: server.identity.fingerprint, localAddress, connectTimeoutMs: 10_000 }),
    async close() {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface WebResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** A browser-like HTTPS client: cookie jar, form posts, CSRF token of the last page. */
export class WebClient {
  readonly cookies = new Map<string, string>();
  lastBody = '';

  constructor(
    readonly env: WebEnv,
    readonly localAddress = '127.0.0.1',
  ) {}

  /** `raw` sends that body as it is (give its content-type in `headers`). */
  request(method: 'GET' | 'POST', path: string, form?: Record<string, string>, headers: Record<string, string> = {}, raw?: string): Promise<WebResponse> {
    const body = raw ?? (form ? new URLSearchParams(form).toString() : undefined);
    const cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
    return new Promise((resolve, reject) => {
      const req = request(
        {
          host: '127.0.0.1',
          port: this.env.port,
          path,
          method,
          ca: this.env.ca,
          localAddress: this.localAddress,
          agent: false,
          headers: { ...(cookie ? { cookie } : {}), ...(body !== undefined ? { 'content-type': 'application/x-www-form-urlencoded', 'content-length': String(Buffer.byteLength(body)) } : {}), ...headers },
          timeout: 20_000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            for (const c of res.headers['set-cookie'] ?? []) {
              const [pair] = c.split(';');
              const i = pair!.indexOf('=');
              const name = pair!.slice(0, i);
              const value = pair!.slice(i + 1);
              if (value === '' || /expires=Thu, 01 Jan 1970/i.test(c)) this.cookies.delete(name);
              else this.cookies.set(name, value);
            }
            const text = Buffer.concat(chunks).toString('utf8');
            if ((res.headers['content-type'] ?? '').startsWith('text/html')) this.lastBody = text;
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text });
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error('request timed out')));
      req.on('error', reject);
      req.end(body);
    });
  }

  get(path: string): Promise<WebResponse> {
    return this.request('GET', path);
  }

  /** The `_csrf` value of the last HTML page's first form. */
  csrf(): string {
    const m = /name="_csrf" value="([^"]+)"/.exec(this.lastBody);
    if (!m) throw new Error('no CSRF token on the last page');
    return m[1]!;
  }

  /** POST a form with the last page's CSRF token. */
  post(path: string, form: Record<string, string> = {}): Promise<WebResponse> {
    return this.request('POST', path, { _csrf: this.csrf(), ...form });
  }

  async login(club: string, user: string, password: string): Promise<WebResponse> {
    await this.get('/login');
    return this.post('/login', { club, user, password });
  }
}
