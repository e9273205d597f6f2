import { chmodSync, lstatSync, statSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { OperationError, type OperationRegistry } from './operations.js';
import type { Logger } from '../common/log.js';

/**
 * The operator's channel to the running daemon: a Unix domain socket in the data folder, mode
 * 0600 (the data folder itself is 0700), speaking newline-delimited JSON:
 *   request  {"id": 1, "op": "bans.list", "args": {...}}
 *   response {"id": 1, "ok": true, "result": ...} | {"id": 1, "ok": false, "error": {"code", "message"}}
 * Lines are capped; a peer that exceeds the cap or sends invalid JSON is disconnected.
 */
export const MAX_CONTROL_LINE = 1024 * 1024;

interface Handler {
  run(op: string, args: unknown): Promise<unknown>;
}

export class ControlServer {
  private handler: Handler | undefined;
  private constructor(private readonly server: Server, private readonly path: string) {}

  /**
   * Bind the socket now and answer operations once `attach()` gave them a context. The daemon
   * binds it first thing: a live socket is the data folder's lock (a second daemon on the same
   * folder fails here, before it binds a port or touches a file), and until the daemon is up
   * every operation is answered with the code STARTING.
   */
  static async bind(path: string, log: Logger): Promise<ControlServer> {
    await removeStaleSocket(path);
    let self: ControlServer | undefined;
    const server = createServer((s) => serve(s, () => self?.handler, log));
    const oldMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(path, () => resolve());
      });
    } finally {
      process.umask(oldMask);
    }
    chmodSync(path, 0o600);
    self = new ControlServer(server, path);
    return self;
  }

  /** Start answering operations from this registry with this context. */
  attach<C>(registry: OperationRegistry<C>, ctx: C): void {
    this.handler = { run: (op, args) => registry.run(ctx, op, args) };
  }

  /** bind() and attach() in one step. */
  static async listen<C>(path: string, registry: OperationRegistry<C>, ctx: C, log: Logger): Promise<ControlServer> {
    const c = await ControlServer.bind(path, log);
    c.attach(registry, ctx);
    return c;
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => this.server.close(() => r()));
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}

function serve(socket: Socket, handler: () => Handler | undefined, log: Logger): void {
  let buf = '';
  socket.setEncoding('utf8');
  socket.on('error', () => socket.destroy());
  socket.on('data', (chunk: string) => {
    buf += chunk;
    if (buf.length > MAX_CONTROL_LINE && !buf.includes('\n')) {
      socket.destroy();
      return;
    }
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let req: { id?: unknown; op?: unknown; args?: unknown };
      try {
        req = JSON.parse(line) as typeof req;
      } catch {
        socket.destroy();
        return;
      }
      const id = req.id;
      const h = handler();
      const pending = h ? h.run(String(req.op), req.args) : Promise.reject(new OperationError('STARTING', 'the daemon is starting; try again in a moment'));
      pending
        .then((result) => reply(socket, { id, ok: true, result: result ?? null }))
        .catch((e: unknown) => {
          const code = (e as { code?: unknown }).code;
          const known = e instanceof OperationError || typeof code === 'string';
          if (!known) log.error('control operation failed', { op: String(req.op), error: (e as Error)?.name });
          reply(socket, {
            id,
            ok: false,
            error: known ? { code: String(code), message: (e as Error).message } : { code: 'INTERNAL', message: 'internal error; see the daemon log' },
          });
        });
    }
  });
}

function reply(socket: Socket, body: unknown): void {
  if (!socket.destroyed) socket.write(`${JSON.stringify(body)}\n`);
}

/** A socket file left by a killed daemon is removed; a live one means another daemon runs. */
async function removeStaleSocket(path: string): Promise<void> {
  try {
    if (!lstatSync(path).isSocket()) throw new OperationError('CONTROL_PATH_BUSY', `${path} exists and is not a socket`);
  } catch (e) {
    if (e instanceof OperationError) throw e;
    return;
  }
  const alive = await new Promise<boolean>((resolve) => {
    const c = createConnection(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new OperationError('DAEMON_RUNNING', `another daemon is serving ${path}`);
  unlinkSync(path);
}

/**
 * Before commusicctl sends anything: the socket must be a socket owned by an account we trust
 * (default: this process's effective uid, and the owner of the folder holding the socket, i.e.
 * the data folder's owner, which the daemon checks is its own uid), in a folder nobody else can
 * write to. Returns false when there is no socket (no daemon), throws OperationError
 * CONTROL_SOCKET_UNSAFE otherwise.
 */
export function checkControlSocket(path: string, trustedUids?: readonly number[]): boolean {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return false;
  }
  const dirSt = statSync(dirname(path));
  const uids = trustedUids ?? [...new Set([process.geteuid?.() ?? -1, dirSt.uid])];
  if (!st.isSocket()) throw new OperationError('CONTROL_SOCKET_UNSAFE', `${path} is not a socket; not sending anything to it`);
  if (!uids.includes(st.uid)) throw new OperationError('CONTROL_SOCKET_UNSAFE', `control socket ${path} is owned by uid ${st.uid}, not by the daemon's account (uid ${uids.join(' or ')}); another user may have put it there, so nothing was sent`);
  if ((dirSt.mode & 0o022) !== 0 || !uids.includes(dirSt.uid)) throw new OperationError('CONTROL_SOCKET_UNSAFE', `the folder of control socket ${path} is writable by others or owned by another account; nothing was sent (run: chmod 700 ${dirname(path)})`);
  return true;
}

/**
 * Client side, for commusicctl. Resolves undefined when no daemon listens (so the caller runs
 * the operation offline); rejects with the daemon's error otherwise, and with
 * CONTROL_SOCKET_UNSAFE (before connecting) when the socket fails checkControlSocket.
 */
export async function callControl(path: string, op: string, args: unknown, timeoutMs = 30_000, trustedUids?: readonly number[]): Promise<{ result: unknown } | undefined> {
  if (!checkControlSocket(path, trustedUids)) return undefined;
  return new Promise((resolve, reject) => {
    const c = createConnection(path);
    let buf = '';
    const timer = setTimeout(() => {
      c.destroy();
      reject(new OperationError('CONTROL_TIMEOUT', `the daemon did not answer ${op} within ${timeoutMs} ms`));
    }, timeoutMs);
    c.setEncoding('utf8');
    c.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') resolve(undefined);
      else reject(new OperationError('CONTROL_FAILED', `cannot reach the daemon at ${path}: ${e.code ?? e.message}`));
    });
    c.once('connect', () => c.write(`${JSON.stringify({ id: 1, op, args })}\n`));
    c.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      c.end();
      const res = JSON.parse(buf.slice(0, nl)) as { ok: boolean; result?: unknown; error?: { code: string; message: string } };
      if (res.ok) resolve({ result: res.result });
      else reject(new OperationError(res.error?.code ?? 'INTERNAL', res.error?.message ?? 'operation failed'));
    });
  });
}
