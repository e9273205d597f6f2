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
 *
 * Bounds on the daemon's side (ControlLimits): an answer larger than `maxResponseBytes` is
 * replaced by the error RESPONSE_TOO_LARGE (narrow the operation: a club, a filter, fewer
 * entries); an operation not finished within `opTimeoutMs` is answered CONTROL_TIMEOUT (it may
 * still complete; its late answer is dropped); at most `maxPending` operations run per connection
 * (more: CONTROL_BUSY); a connection with nothing pending is closed after `idleMs`; a peer that
 * does not read its answers (unsent bytes past twice `maxResponseBytes`) is disconnected.
 * commusicctl's side (callControl) stops reading at `maxResponseBytes` too (CONTROL_FAILED).
 */
export const MAX_CONTROL_LINE = 1024 * 1024;

/** The daemon's bounds of the control socket (defaults: the DEFAULT_CONTROL_* constants). */
export interface ControlLimits {
  /** Largest answer line in bytes. */
  maxResponseBytes?: number;
  /** Longest an operation may take before it is answered CONTROL_TIMEOUT (ms). */
  opTimeoutMs?: number;
  /** Operations running at once per connection. */
  maxPending?: number;
  /** A connection with no operation pending is closed after this long (ms). */
  idleMs?: number;
}

/** 64 MiB: `cluster status --json` of 10,000 clubs with standbys is a few MB. */
export const DEFAULT_CONTROL_MAX_RESPONSE = 64 * 1024 * 1024;
/** 2 h: longer than commusicctl's longest wait (backup runs and restores, 1 h). */
export const DEFAULT_CONTROL_OP_TIMEOUT_MS = 2 * 3600 * 1000;
export const DEFAULT_CONTROL_MAX_PENDING = 8;
export const DEFAULT_CONTROL_IDLE_MS = 5 * 60 * 1000;

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
  static async bind(path: string, log: Logger, limits: ControlLimits = {}): Promise<ControlServer> {
    await removeStaleSocket(path);
    let self: ControlServer | undefined;
    const l: Required<ControlLimits> = {
      maxResponseBytes: limits.maxResponseBytes ?? DEFAULT_CONTROL_MAX_RESPONSE,
      opTimeoutMs: limits.opTimeoutMs ?? DEFAULT_CONTROL_OP_TIMEOUT_MS,
      maxPending: limits.maxPending ?? DEFAULT_CONTROL_MAX_PENDING,
      idleMs: limits.idleMs ?? DEFAULT_CONTROL_IDLE_MS,
    };
    const server = createServer((s) => serve(s, () => self?.handler, log, l));
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
  static async listen<C>(path: string, registry: OperationRegistry<C>, ctx: C, log: Logger, limits: ControlLimits = {}): Promise<ControlServer> {
    const c = await ControlServer.bind(path, log, limits);
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

function serve(socket: Socket, handler: () => Handler | undefined, log: Logger, l: Required<ControlLimits>): void {
  let buf = '';
  let pending = 0;
  socket.setEncoding('utf8');
  socket.on('error', () => socket.destroy());
  // Closed when idle with nothing pending; a long operation keeps its connection.
  socket.setTimeout(l.idleMs, () => {
    if (pending === 0) socket.destroy();
  });
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
      const op = String(req.op).slice(0, 64);
      if (pending >= l.maxPending) {
        reply(socket, { id, ok: false, error: { code: 'CONTROL_BUSY', message: `${l.maxPending} operations are running on this connection already; wait for their answers` } }, l);
        continue;
      }
      pending++;
      const h = handler();
      const run = h ? h.run(String(req.op), req.args) : Promise.reject(new OperationError('STARTING', 'the daemon is starting; try again in a moment'));
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new OperationError('CONTROL_TIMEOUT', `${op} did not finish within ${l.opTimeoutMs} ms; it may still complete (see the daemon log)`)), l.opTimeoutMs);
        timer.unref();
      });
      Promise.race([run, timeout])
        .then((result) => reply(socket, { id, ok: true, result: result ?? null }, l, op))
        .catch((e: unknown) => {
          const code = (e as { code?: unknown }).code;
          const known = e instanceof OperationError || typeof code === 'string';
          if (!known) log.error('control operation failed', { op, error: (e as Error)?.name });
          reply(socket, {
            id,
            ok: false,
            error: known ? { code: String(code), message: (e as Error).message } : { code: 'INTERNAL', message: 'internal error; see the daemon log' },
          }, l);
        })
        .finally(() => {
          clearTimeout(timer);
          pending--;
        });
      // A late answer or failure of an operation that timed out is dropped.
      run.catch(() => undefined);
    }
  });
}

function reply(socket: Socket, body: { id: unknown; ok: boolean; result?: unknown; error?: { code: string; message: string } }, l: Required<ControlLimits>, op = ''): void {
  if (socket.destroyed) return;
  let line = `${JSON.stringify(body)}\n`;
  const bytes = Buffer.byteLength(line);
  if (bytes > l.maxResponseBytes) {
    line = `${JSON.stringify({ id: body.id, ok: false, error: { code: 'RESPONSE_TOO_LARGE', message: `the answer of ${op} is ${bytes} bytes, more than the control socket's ${l.maxResponseBytes}; narrow the operation (one club, a filter, fewer entries)` } })}\n`;
  }
  // A peer that does not read its answers is not buffered for without end.
  if (socket.writableLength > 2 * l.maxResponseBytes) {
    socket.destroy();
    return;
  }
  socket.write(line);
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
 * the operation offline); rejects with the daemon's error otherwise, with CONTROL_SOCKET_UNSAFE
 * (before connecting) when the socket fails checkControlSocket, CONTROL_TIMEOUT after
 * `timeoutMs`, and CONTROL_FAILED for an answer over `maxResponseBytes` or not JSON.
 */
export async function callControl(path: string, op: string, args: unknown, timeoutMs = 30_000, trustedUids?: readonly number[], maxResponseBytes = DEFAULT_CONTROL_MAX_RESPONSE): Promise<{ result: unknown } | undefined> {
  if (!checkControlSocket(path, trustedUids)) return undefined;
  return new Promise((resolve, reject) => {
    const c = createConnection(path);
    let buf = '';
    const fail = (why: string) => {
      clearTimeout(timer);
      c.destroy();
      reject(new OperationError('CONTROL_FAILED', why));
    };
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
      if (nl < 0) {
        if (buf.length > maxResponseBytes) fail(`the daemon's answer to ${op} is larger than ${maxResponseBytes} bytes; nothing more was read`);
        return;
      }
      clearTimeout(timer);
      c.end();
      let res: { ok: boolean; result?: unknown; error?: { code: string; message: string } };
      try {
        res = JSON.parse(buf.slice(0, nl)) as typeof res;
      } catch {
        fail(`the daemon's answer to ${op} is not JSON`);
        return;
      }
      if (res.ok) resolve({ result: res.result });
      else reject(new OperationError(res.error?.code ?? 'INTERNAL', res.error?.message ?? 'operation failed'));
    });
  });
}
