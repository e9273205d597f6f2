/**
 * Socket reads into the daemon's own buffers (issue 13, the 1 MiB echo: protocol/read-buffers.ts
 * says why and how they are reused).
 *
 * Node 20 offers this only for sockets it creates itself: `new net.Socket({ onread: { buffer,
 * callback } })` (documented), not for the sockets a net.Server accepts. An accepted socket is
 * given the same setup here, the way that constructor does it: the socket's three onread slots
 * (found by value on a probe socket built with the documented option, not by their private
 * names) and the handle's useUserBuffer(). That reaches into Node's internals (`_handle`, the
 * slots), so it is used only after a self test at start-up proved it on this Node: a loopback
 * connection whose bytes must arrive in order in the buffers handed out, with no 'data' event,
 * and the end of the stream reported as usual. If anything is missing or different the daemon
 * reads the ordinary way (a fresh buffer per read, the same bytes, more garbage collection),
 * and says so once. `COMMUSIC_SOCKET_READS=node` in the environment forces the ordinary way.
 */
import { once } from 'node:events';
import { createConnection, createServer, Socket, type AddressInfo, type SocketConstructorOpts } from 'node:net';

/** `COMMUSIC_SOCKET_READS=node` in the environment: read the ordinary way (a buffer per read). */
export const SOCKET_READS_ENV = 'COMMUSIC_SOCKET_READS';

/**
 * The next read buffer (Node calls it without `this`, once at set-up and after each read) and
 * the read callback (called with the socket as `this`).
 */
export type ReadTarget = () => Uint8Array;
export type ReadDone = (this: Socket, n: number, buf: Uint8Array) => void;

interface Slots {
  buffer: symbol;
  generator: symbol;
  callback: symbol;
}

interface Handle {
  reading?: boolean;
  useUserBuffer?: (b: Uint8Array) => void;
}

type Slotted = Socket & Record<symbol, unknown> & { _handle?: Handle | null };

/** The socket's onread slots, found by value on sockets made with the documented option. */
function findSlots(): Slots | undefined {
  const buffer = new Uint8Array(1);
  const generator = () => buffer;
  const callback = () => undefined;
  // The constructor's documented `onread` option (Node's docs; missing from @types/node's
  // SocketConstructorOpts, which lists it for connect() only).
  const byBuffer = new Socket({ onread: { buffer, callback } } as SocketConstructorOpts) as Slotted;
  const byGenerator = new Socket({ onread: { buffer: generator, callback } } as SocketConstructorOpts) as Slotted;
  const find = (s: Slotted, v: unknown) => {
    const hits = Object.getOwnPropertySymbols(s).filter((k) => s[k] === v);
    return hits.length === 1 ? hits[0] : undefined;
  };
  const slots = { buffer: find(byBuffer, buffer), generator: find(byGenerator, generator), callback: find(byBuffer, callback) };
  byBuffer.destroy();
  byGenerator.destroy();
  if (!slots.buffer || !slots.generator || !slots.callback || slots.buffer === slots.generator) return undefined;
  return slots as Slots;
}

let slots: Slots | undefined;
let state: { impl: 'user-buffer' | 'node'; reason?: string } | undefined;
let probing: Promise<void> | undefined;

/**
 * Gives an accepted socket that has not started reading (net.Server's pauseOnConnect) the
 * onread setup: every read lands in the buffer `target` returned last, and `done` is called
 * with the byte count instead of a 'data' event; call socket.resume() afterwards. False (and
 * nothing changed) unless the self test passed (userReadsBackend) or when the socket cannot
 * take it: the caller then reads the ordinary way.
 */
export function readIntoUserBuffers(socket: Socket, target: ReadTarget, done: ReadDone): boolean {
  return state?.impl === 'user-buffer' && install(socket, target, done);
}

function install(socket: Socket, target: ReadTarget, done: ReadDone): boolean {
  const s = socket as Slotted;
  const handle = s._handle;
  if (!slots || !handle || typeof handle.useUserBuffer !== 'function' || handle.reading) return false;
  const first = target();
  s[slots.generator] = target;
  s[slots.callback] = done;
  s[slots.buffer] = first;
  handle.useUserBuffer(first);
  return true;
}

/** Which read path accepted sockets take, and why the ordinary one when it is that. */
export function userReadsBackend(): { impl: 'user-buffer' | 'node'; reason?: string } {
  return state ?? { impl: 'node', reason: 'not probed (the daemon probes at start)' };
}

/**
 * Runs the self test once per process (later calls wait for the first): a loopback server with
 * pauseOnConnect, one connection, 3,000 bytes in several writes, read through buffers of 100
 * bytes that alternate between two; every byte must arrive in order, no 'data' event, 'end'
 * after the last. Sets userReadsBackend(). Never throws; at most 2 s.
 */
export function probeUserReads(): Promise<void> {
  probing ??= runProbe().then(
    (reason) => {
      state = reason === undefined ? { impl: 'user-buffer' } : { impl: 'node', reason };
    },
    (e: unknown) => {
      state = { impl: 'node', reason: `self test failed: ${(e as Error)?.name ?? typeof e}` };
    },
  );
  return probing;
}

async function runProbe(): Promise<string | undefined> {
  if (process.env[SOCKET_READS_ENV] === 'node') return `${SOCKET_READS_ENV}=node`;
  slots = findSlots();
  if (!slots) return 'this Node has no onread slots on net.Socket';
  const sent = Buffer.alloc(3000);
  for (let i = 0; i < sent.length; i++) sent[i] = (i * 7 + 3) & 0xff;
  const bufs = [Buffer.alloc(100), Buffer.alloc(100)];
  const got: Buffer[] = [];
  let turn = 0;
  let wrongBuffer = false;
  let dataEvents = 0;
  const server = createServer({ pauseOnConnect: true });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('timeout')), 2000);
  });
  let client: Socket | undefined;
  let accepted: Socket | undefined;
  try {
    const run = async (): Promise<string | undefined> => {
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      client = createConnection((server.address() as AddressInfo).port, '127.0.0.1');
      client.on('error', () => undefined);
      [accepted] = (await once(server, 'connection')) as [Socket];
      accepted.on('error', () => undefined);
      accepted.on('data', () => dataEvents++);
      const ok = install(
        accepted,
        () => bufs[turn++ % 2]!,
        function (this: Socket, n: number, buf: Uint8Array) {
          if (buf !== bufs[(turn - 1) % 2]) wrongBuffer = true;
          got.push(Buffer.from(buf.subarray(0, n)));
        },
      );
      if (!ok) return 'an accepted socket has no handle that takes a user buffer';
      const ended = once(accepted, 'end');
      accepted.resume();
      for (let i = 0; i < sent.length; i += 700) client.write(sent.subarray(i, i + 700));
      client.end();
      await ended;
      return undefined;
    };
    const early = await Promise.race([run(), timeout]);
    if (early !== undefined) return early;
  } finally {
    clearTimeout(timer);
    accepted?.destroy();
    client?.destroy();
    server.close();
  }
  if (wrongBuffer) return 'reads did not land in the buffer handed out';
  if (dataEvents > 0) return "reads still emitted 'data'";
  if (!Buffer.concat(got).equals(sent)) return 'bytes read differ from bytes sent';
  return undefined;
}
