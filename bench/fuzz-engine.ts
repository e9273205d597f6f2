/**
 * A socket-level protocol fuzzer (issue 18). It speaks CMSP from the spec against a daemon in a
 * child process (bench/fuzz-target.ts) and sends "frames": mutated ClientHellos, mutated
 * messages inside valid records, random command payloads after a login, stream messages, and
 * tampered records. It checks that the daemon process never exits, never answers INTERNAL,
 * always answers or closes (a sentinel ping closes every batch), and bans offenders (an HTTP
 * request from a fresh address must make the next connection from it be refused at accept).
 *
 * Deterministic per seed: the same seed gives the same inputs (the interleaving of concurrent
 * connections, and so the daemon's reactions, may differ). Every failing input is reported as
 * hex: the raw bytes for handshake cases, the record plaintexts for cases after the handshake.
 *
 * Each connection uses its own source address from 127.1.0.0/16 (bans last 1 s in the target,
 * so addresses can be reused); ban checks use 127.2.0.0/16, each address once.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { connect as netConnect, type Socket } from 'node:net';
import { systemRandomness, x25519, type EphemeralKey } from '../crypto/handshake-crypto.js';
import { ClientSession, pinFingerprint, type ClientEvent } from '../protocol/client-session.js';
import { CLIENT_HELLO_LEN, MAX_CHUNK_LEN, MAX_RECORD_PLAINTEXT, RECORD_CLOSE, RECORD_DATA, RECORD_FINISHED, RECORD_HEADER_LEN, RECORD_KEY_UPDATE, SERVER_HELLO_LEN } from '../protocol/constants.js';
import { parseServerHello } from '../protocol/handshake-messages.js';
import { deriveSessionSecrets } from '../protocol/key-schedule.js';
import { encodeMessage, type Message } from '../protocol/messages.js';
import { RecordSealer } from '../protocol/record-layer.js';
import { FUZZ_ADMIN, FUZZ_PASSWORD, type FromTarget, type TargetMem, type TargetStats, type ToTarget } from './fuzz-shared.js';

export interface FuzzOptions {
  frames: number;
  seed: number;
  /** Connections driven at once. */
  concurrency?: number;
  /** Progress and failure lines. */
  log?: (line: string) => void;
  /** Print a progress line every this many frames (0: never). */
  progressEvery?: number;
  /** Run only these case kinds (default: all). */
  only?: string[];
  /**
   * Frames per memory segment (default: a tenth of the frames, at least 1,000). At the end of each
   * segment the fuzzer lets the running cases finish, waits for the daemon to drop their
   * connections, forces a GC in the target and records a SegmentSample.
   */
  segmentFrames?: number;
  /** Extra environment for the target process, e.g. `{ MALLOC_ARENA_MAX: '2' }`. */
  targetEnv?: Record<string, string>;
}

/** The target's memory and counts at the end of one segment, after its cases finished and a forced GC. */
export interface SegmentSample {
  /** Frames sent so far. */
  frames: number;
  /** The highest RSS sampled (every 0.5 s, no GC) during this segment. */
  peakRss: number;
  mem: TargetMem;
}

/**
 * The memory verdict of a run (issue 18, "flat memory after the run"). Segment 1 holds the
 * warm-up and is left out; of the rest, the later half is the plateau. The run is `flat` when,
 * for RSS and for JS heap + external memory each (M: the later half's median):
 * (a) the last segment is within M + max(10 % of M, 2 MiB): the end does not stand above the
 *     plateau, and
 * (b) the least-squares line through the later half rises by at most max(5 % of M, 2 MiB) across
 *     it: a steady climb (a leak) fails even while each step is small.
 * `slopePer100k` is the least-squares slope of RSS over all segments after the first, in bytes
 * per 100,000 frames, for the report. With fewer than 4 segments there is no plateau to judge:
 * `insufficient`.
 */
export interface MemoryVerdict {
  verdict: 'flat' | 'rising' | 'insufficient';
  rssMedian: number;
  rssLast: number;
  jsMedian: number;
  jsLast: number;
  slopePer100k: number;
  rule: string;
}

const FLAT_RULE =
  "segments after the first; later half's median M; flat when, for RSS and for JS heap+external, the last segment <= M + max(10 % of M, 2 MiB) and the fitted rise across the later half <= max(5 % of M, 2 MiB)";

/** Least-squares slope of ys over xs (0 for fewer than two distinct xs). */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  const mx = xs.reduce((a, x) => a + x, 0) / n;
  const my = ys.reduce((a, y) => a + y, 0) / n;
  let sxx = 0;
  let sxy = 0;
  for (let i = 0; i < n; i++) {
    sxx += (xs[i]! - mx) ** 2;
    sxy += (xs[i]! - mx) * (ys[i]! - my);
  }
  return sxx > 0 ? sxy / sxx : 0;
}

function median(xs: number[]): number {
  const a = [...xs].sort((x, y) => x - y);
  const m = a.length >> 1;
  return a.length % 2 === 1 ? a[m]! : (a[m - 1]! + a[m]!) / 2;
}

/** Applies the rule of MemoryVerdict to the segment samples of one run. */
export function memoryVerdict(segments: readonly SegmentSample[]): MemoryVerdict {
  const after = segments.slice(1);
  const js = (x: SegmentSample): number => x.mem.heapUsed + x.mem.external;
  if (after.length < 3) return { verdict: 'insufficient', rssMedian: 0, rssLast: 0, jsMedian: 0, jsLast: 0, slopePer100k: 0, rule: FLAT_RULE };
  const later = after.slice(Math.floor(after.length / 2));
  const last = after[after.length - 1]!;
  const rssMedian = median(later.map((x) => x.mem.rss));
  const jsMedian = median(later.map(js));
  const within = (v: number, m: number): boolean => v <= m + Math.max(0.1 * m, 2 * 1048576);
  const xs = later.map((x) => x.frames);
  const span = xs[xs.length - 1]! - xs[0]!;
  const level = (ys: number[], m: number): boolean => slope(xs, ys) * span <= Math.max(0.05 * m, 2 * 1048576);
  const slopePer100k = slope(after.map((x) => x.frames), after.map((x) => x.mem.rss)) * 100_000;
  const flat =
    within(last.mem.rss, rssMedian) &&
    within(js(last), jsMedian) &&
    level(later.map((x) => x.mem.rss), rssMedian) &&
    level(later.map(js), jsMedian);
  return { verdict: flat ? 'flat' : 'rising', rssMedian, rssLast: last.mem.rss, jsMedian, jsLast: js(last), slopePer100k, rule: FLAT_RULE };
}

export interface FuzzFailure {
  kind: 'internal' | 'no-answer' | 'exit' | 'not-banned' | 'bad-error-text' | 'client-error' | 'fault';
  caseKind: string;
  note: string;
  /** The inputs of the case, one hex string per frame. */
  inputs: string[];
}

export interface FuzzReport {
  seed: number;
  frames: number;
  cases: number;
  byKind: Record<string, number>;
  /** ERROR codes the daemon answered, with counts. */
  errorCodes: Record<string, number>;
  failures: FuzzFailure[];
  daemonExited: boolean;
  banChecks: number;
  bansMissed: number;
  refusedAtAccept: number;
  /** Daemon RSS in bytes: idle at the start, after the warm-up (a tenth of the frames, at most 20,000), the peak, and at the end after a GC. */
  rss: { start: number; warm: number; peak: number; end: number };
  /** The daemon's JS heap in use and external (Buffer) memory at the start and at the end, both after a GC. */
  heap: { startUsed: number; startExternal: number; endUsed: number; endExternal: number };
  elapsedMs: number;
  daemonStats?: TargetStats;
  /** One sample per segment (see FuzzOptions.segmentFrames), and the verdict over them. */
  segments: SegmentSample[];
  memory?: MemoryVerdict;
  /** The target's idle sample before the first frame and its final one (after a GC). */
  startMem?: TargetMem;
  endMem?: TargetMem;
}

// ---- deterministic randomness -------------------------------------------------------------

/** xorshift128+-like 32-bit generator (sfc32), seeded from one integer. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    for (let i = 0; i < 16; i++) this.u32();
  }
  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }
  /** 0 <= n < max */
  int(max: number): number {
    return max <= 1 ? 0 : this.u32() % max;
  }
  chance(p: number): boolean {
    return this.u32() / 4294967296 < p;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n + 3);
    for (let i = 0; i < n; i += 4) b.writeUInt32LE(this.u32(), i);
    return b.subarray(0, n);
  }
  /** A small size with a long tail: mostly < 64, sometimes up to `max`. */
  size(max: number): number {
    const r = this.int(100);
    if (r < 70) return this.int(Math.min(64, max + 1));
    if (r < 95) return this.int(Math.min(4096, max + 1));
    return this.int(max + 1);
  }
}

// ---- mutation -----------------------------------------------------------------------------

const INTERESTING = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1f, 0x40, 0x5f, 0x60, 0x7b, 0x9f, 0xa0, 0xbf, 0xc0, 0xf4, 0xf5, 0xf6, 0xf7, 0xf9, 0xfa, 0xfb, 0xff];

/** One to a few byte-level mutations of `input` (flip, set, insert, delete, truncate, splice, extend). */
export function mutate(rng: Rng, input: Uint8Array): Buffer {
  let b = Buffer.from(input);
  const n = 1 + rng.int(rng.chance(0.2) ? 8 : 3);
  for (let i = 0; i < n; i++) {
    const pos = rng.int(b.length + 1);
    switch (rng.int(8)) {
      case 0:
        if (b.length > 0) b[Math.min(pos, b.length - 1)]! ^= 1 << rng.int(8);
        break;
      case 1:
        if (b.length > 0) b[Math.min(pos, b.length - 1)] = rng.pick(INTERESTING);
        break;
      case 2:
        b = Buffer.concat([b.subarray(0, pos), rng.bytes(1 + rng.int(4)), b.subarray(pos)]);
        break;
      case 3:
        b = Buffer.concat([b.subarray(0, pos), b.subarray(Math.min(b.length, pos + 1 + rng.int(4)))]);
        break;
      case 4:
        b = b.subarray(0, pos);
        break;
      case 5: {
        // Repeat a slice (grows containers' apparent contents).
        const len = rng.int(Math.max(1, b.length - pos));
        b = Buffer.concat([b.subarray(0, pos), b.subarray(pos, pos + len), b.subarray(pos)]);
        break;
      }
      case 6:
        b = Buffer.concat([b, rng.bytes(rng.size(256))]);
        break;
      default:
        if (b.length > 0) b[Math.min(pos, b.length - 1)] = rng.u32() & 0xff;
    }
  }
  return b;
}

// ---- random CBOR values -------------------------------------------------------------------

const KEYS = ['id', 'club', 'user', 'password', 'data', 'name', 'fields', 'filters', 'sort', 'limit', 'offset', 'field', 'op', 'value', 'dir', 'record', 'userId', 'role', 'registers', 'grants', 'area', 'actions', 'scope', 'kind', 'username', 'displayName', 'admin', 'emails', 'entity', 'from', 'to', 'since', 'until', 'format', 'docId', 'title', 'personId', 'reason', 'changes', '__proto__', 'constructor', ''];

const TEXTS = ['', 'a', 'admin', 'ping', 'club', 'eq', 'asc', 'desc', 'registers', 'own', 'read', 'write', '0', '-1', 'ä', '\u0000', '\u202e', 'x'.repeat(300), '💥'];

export function randomValue(rng: Rng, depth = 0): unknown {
  const r = rng.int(depth > 3 ? 7 : 10);
  switch (r) {
    case 0:
      return rng.pick([0, 1, -1, 23, 24, 255, 256, 65535, 65536, 2 ** 31, 2 ** 32, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER, 1.5, -0.25]);
    case 1:
      return rng.int(1000);
    case 2:
      return rng.pick(TEXTS);
    case 3:
      return rng.bytes(rng.size(MAX_CHUNK_LEN + 16));
    case 4:
      return rng.pick([true, false, null]);
    case 5:
      return rng.bytes(rng.int(8)).toString('hex');
    case 6:
      return new Uint8Array(0);
    case 7: {
      const n = rng.size(40);
      const a: unknown[] = [];
      for (let i = 0; i < n; i++) a.push(randomValue(rng, depth + 1));
      return a;
    }
    default:
      return randomMap(rng, depth + 1);
  }
}

export function randomMap(rng: Rng, depth = 0): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  const n = rng.int(6);
  for (let i = 0; i < n; i++) {
    const k = rng.chance(0.85) ? rng.pick(KEYS) : rng.bytes(1 + rng.int(6)).toString('hex');
    if (k === '__proto__') continue; // the encoder would drop it; the mutators cover the raw bytes
    o[k] = randomValue(rng, depth + 1);
  }
  return o;
}

// ---- one protocol connection ----------------------------------------------------------------

const HTTP_PROBE = Buffer.from('GET / HTTP/1.1\r\nHost: fuzz\r\n\r\n');
const REFUSED_BANNED = Buffer.from('CMSP-REFUSED BANNED');

interface Outcome {
  /** Server closed the connection (or refused it at accept). */
  closed: boolean;
  answers: Message[];
  events: ClientEvent[];
}

/** A TCP connection that records what arrives, for the fuzz cases. */
class Wire {
  readonly chunks: Buffer[] = [];
  closed = false;
  private waiters: (() => void)[] = [];
  private constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.wake();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  static open(port: number, localAddress: string): Promise<Wire> {
    return new Promise((resolve) => {
      const s = netConnect({ host: '127.0.0.1', port, localAddress, noDelay: true });
      const w = new Wire(s);
      s.once('connect', () => resolve(w));
      s.once('close', () => resolve(w));
    });
  }

  private wake(): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
  }

  write(b: Uint8Array): void {
    if (!this.socket.destroyed) this.socket.write(b);
  }

  take(): Buffer {
    const b = Buffer.concat(this.chunks);
    this.chunks.length = 0;
    return b;
  }

  /** Resolves on new data or close, or after `ms`. */
  wait(ms: number): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      const self = this;
      function done(): void {
        clearTimeout(t);
        const i = self.waiters.indexOf(done);
        if (i >= 0) self.waiters.splice(i, 1);
        resolve();
      }
      this.waiters.push(done);
    });
  }

  destroy(): void {
    this.socket.destroy();
  }
}

interface Session {
  wire: Wire;
  client: ClientSession;
  /** Seals client records; positioned after the FINISHED (which it sealed). */
  forge: RecordSealer;
  pending: Buffer;
}

const ANSWER_TIMEOUT_MS = 20000;

/** Handshake by hand; the FINISHED is sealed by `forge`, so every later record is ours. */
async function handshake(port: number, fingerprint: string, ip: string): Promise<Session | 'refused'> {
  const wire = await Wire.open(port, ip);
  if (wire.closed) return 'refused';
  let eph: EphemeralKey | undefined;
  const client = new ClientSession({
    acceptServerKey: pinFingerprint(fingerprint),
    randomness: { random32: systemRandomness.random32, ephemeral: () => (eph = systemRandomness.ephemeral()) },
    // Version 1: every forged DATA record below is one bare message (PROTOCOL.md 6).
    maxVersion: 1,
  });
  client.start();
  const hello = Buffer.concat(client.takeOutput());
  wire.write(hello);
  let got = Buffer.alloc(0);
  const deadline = Date.now() + ANSWER_TIMEOUT_MS;
  while (got.length < SERVER_HELLO_LEN + RECORD_HEADER_LEN + 48) {
    if (wire.closed) {
      wire.destroy();
      return 'refused';
    }
    if (Date.now() > deadline) throw new Error('no ServerHello');
    await wire.wait(500);
    got = Buffer.concat([got, wire.take()]);
  }
  client.receive(got);
  const ev = client.nextEvent();
  if (ev.type !== 'established') throw new Error(`handshake failed: ${JSON.stringify(ev)}`);
  const sh = parseServerHello(got.subarray(0, SERVER_HELLO_LEN));
  const secrets = deriveSessionSecrets(x25519(eph!, sh.share)!, hello, sh.signed, sh.signature);
  client.takeOutput(); // its own FINISHED: ours goes out through forge
  const forge = new RecordSealer(secrets.clientToServer);
  const out: Buffer[] = [];
  forge.seal(RECORD_FINISHED, secrets.clientFinished, out);
  return { wire, client, forge, pending: Buffer.concat(out) };
}

function sealData(s: Session, plaintext: Uint8Array): void {
  const out: Buffer[] = [];
  s.forge.seal(RECORD_DATA, plaintext, out);
  s.pending = Buffer.concat([s.pending, ...out]);
}

/** Sends what is pending plus a sentinel ping, and collects answers until it is answered or the connection closes. */
async function flushAndSettle(s: Session, sentinelId: number, addPing = true): Promise<Outcome & { answered: boolean }> {
  if (addPing) sealData(s, encodeMessage({ kind: 'request', id: sentinelId, command: 'ping', payload: {}, stream: false }));
  s.wire.write(s.pending);
  s.pending = Buffer.alloc(0);
  const answers: Message[] = [];
  const events: ClientEvent[] = [];
  const deadline = Date.now() + ANSWER_TIMEOUT_MS;
  for (;;) {
    const got = s.wire.take();
    if (got.length > 0) s.client.receive(got);
    for (;;) {
      const e = s.client.nextEvent();
      if (e.type === 'need-data') break;
      events.push(e);
      if (e.type === 'message') {
        answers.push(e.message);
        // Credit the server's download streams so that they finish.
        if (e.message.kind === 'chunk') sealCredit(s, e.message.id, e.message.data.length);
        if (e.message.kind === 'response' && e.message.id === sentinelId) return { closed: false, answers, events, answered: true };
        if (e.message.kind === 'error' && e.message.id === sentinelId) return { closed: false, answers, events, answered: true };
        continue;
      }
      return { closed: true, answers, events, answered: false };
    }
    if (s.pending.length > 0) {
      s.wire.write(s.pending);
      s.pending = Buffer.alloc(0);
    }
    if (s.wire.closed) return { closed: true, answers, events, answered: false };
    if (Date.now() > deadline) return { closed: false, answers, events, answered: false };
    await s.wire.wait(1000);
  }
}

function sealCredit(s: Session, id: number, bytes: number): void {
  if (bytes > 0) sealData(s, encodeMessage({ kind: 'credit', id, bytes }));
}

// ---- the cases ------------------------------------------------------------------------------

type CaseKind = 'hello' | 'message' | 'payload' | 'stream' | 'record' | 'ban';

interface CaseResult {
  frames: number;
  failures: FuzzFailure[];
  errorCodes: string[];
  refused: boolean;
  banCheck?: boolean;
}

interface Ctx {
  port: number;
  fingerprint: string;
  club: string;
  commands: string[];
  askTarget: (m: ToTarget) => Promise<Extract<FromTarget, { type: 'reply' }>>;
}

const TEMPLATES: ((rng: Rng, ctx: Ctx) => Message)[] = [
  () => ({ kind: 'request', id: 1, command: 'ping', payload: {}, stream: false }),
  (rng) => ({ kind: 'request', id: rng.int(100), command: 'ping', payload: { data: rng.bytes(rng.size(MAX_CHUNK_LEN)) }, stream: false }),
  () => ({ kind: 'request', id: 2, command: 'server.info', payload: {}, stream: false }),
  (rng, ctx) => ({ kind: 'request', id: rng.int(100), command: rng.pick(ctx.commands), payload: randomMap(rng), stream: rng.chance(0.1) }),
  (rng) => ({ kind: 'chunk', id: rng.int(4), data: rng.bytes(1 + rng.size(1000)) }),
  (rng) => ({ kind: 'credit', id: rng.int(4), bytes: 1 + rng.int(1 << 20) }),
  (rng) => ({ kind: 'end', id: rng.int(4) }),
  (rng) => ({ kind: 'cancel', id: rng.int(4) }),
  (rng) => ({ kind: 'response', id: rng.int(4), payload: {}, stream: false }),
  (rng) => ({ kind: 'notice', event: 'x', payload: randomValue(rng) }),
];

function checkAnswers(o: Outcome, caseKind: CaseKind, inputs: string[], out: CaseResult): void {
  for (const a of o.answers) {
    if (a.kind !== 'error') continue;
    out.errorCodes.push(a.code);
    if (a.code === 'INTERNAL') out.failures.push({ kind: 'internal', caseKind, note: `INTERNAL answered to request ${a.id}`, inputs });
    if (a.message.length > 256) out.failures.push({ kind: 'bad-error-text', caseKind, note: `error text of ${a.message.length} characters`, inputs });
  }
  for (const e of o.events) {
    if (e.type === 'error' && e.error.code !== 'BAD_RECORD_MAC' && e.error.code !== 'TRUNCATED') {
      // The daemon sent something our client refuses: a malformed answer.
      out.failures.push({ kind: 'client-error', caseKind, note: `the client refused the daemon's output: ${e.error.code} (${e.error.message})`, inputs });
    }
  }
}

async function caseHello(rng: Rng, ctx: Ctx, ip: string): Promise<CaseResult> {
  const client = new ClientSession({ acceptServerKey: () => true });
  client.start();
  const valid = Buffer.concat(client.takeOutput());
  // Mostly keep the magic so the handshake parser, not the classifier, sees the mutation.
  let bytes = mutate(rng, rng.chance(0.8) ? valid.subarray(4) : valid);
  if (bytes.length < CLIENT_HELLO_LEN + 64 && rng.chance(0.8)) bytes = Buffer.concat([valid.subarray(0, 4), bytes]);
  const out: CaseResult = { frames: 1, failures: [], errorCodes: [], refused: false };
  const wire = await Wire.open(ctx.port, ip);
  if (wire.closed) return { ...out, refused: true };
  wire.write(bytes);
  wire.socket.end();
  const deadline = Date.now() + ANSWER_TIMEOUT_MS;
  while (!wire.closed && Date.now() < deadline) await wire.wait(1000);
  if (!wire.closed) out.failures.push({ kind: 'no-answer', caseKind: 'hello', note: 'the daemon neither answered nor closed', inputs: [bytes.toString('hex')] });
  wire.destroy();
  return out;
}

async function caseSession(kind: 'message' | 'payload' | 'stream' | 'record', rng: Rng, ctx: Ctx, ip: string): Promise<CaseResult> {
  const out: CaseResult = { frames: 0, failures: [], errorCodes: [], refused: false };
  const s = await handshake(ctx.port, ctx.fingerprint, ip);
  if (s === 'refused') return { ...out, refused: true };
  const inputs: string[] = [];
  try {
    if (kind === 'payload') {
      const login = encodeMessage({ kind: 'request', id: 900, command: 'auth.login', payload: { club: ctx.club, user: FUZZ_ADMIN, password: FUZZ_PASSWORD }, stream: false });
      sealData(s, login);
      // Logged in before the payloads go out (requests run concurrently).
      const o = await flushAndSettle(s, 900, false);
      if (!o.answered || o.answers.some((a) => a.kind === 'error' && a.id === 900)) throw new Error('login failed');
    }
    // A login costs the daemon a scrypt hash (~0.1 s of CPU): many payloads per login.
    const n = kind === 'payload' ? 100 + rng.int(300) : kind === 'record' ? 1 + rng.int(30) : 1 + rng.int(kind === 'stream' ? 60 : 100);
    // How often this case mutates a message's bytes: from never to mostly.
    const pMutate = rng.pick([0, 0.02, 0.1, 0.4, 0.8]);
    const sealed: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      let plain: Buffer;
      if (kind === 'message') {
        const m = rng.pick(TEMPLATES)(rng, ctx);
        plain = Buffer.from(encodeMessage(m));
        if (rng.chance(pMutate)) plain = mutate(rng, plain);
      } else if (kind === 'payload') {
        // Structural fuzz: well-formed messages (the byte mutations are the message case's job)
        // that fit one record, so that the session lives on through hundreds of payloads.
        const command = rng.pick(ctx.commands);
        do {
          const payload = rng.chance(0.1) ? randomValue(rng) : randomMap(rng);
          plain = Buffer.from(encodeMessage({ kind: 'request', id: i + 1, command, payload, stream: false }));
        } while (plain.length > MAX_RECORD_PLAINTEXT);
      } else if (kind === 'stream') {
        const id = rng.chance(0.8) ? 5 : rng.int(8);
        const choice = i === 0 ? 0 : 1 + rng.int(5);
        const m: Message =
          choice === 0
            ? { kind: 'request', id: 5, command: rng.chance(0.9) ? 'diag.echoStream' : rng.pick(ctx.commands), payload: {}, stream: true }
            : choice === 1 || choice === 2
              ? { kind: 'chunk', id, data: rng.bytes(1 + rng.size(MAX_CHUNK_LEN - 1)) }
              : choice === 3
                ? { kind: 'credit', id, bytes: 1 + rng.int(1 << 24) }
                : choice === 4
                  ? { kind: 'end', id }
                  : { kind: 'cancel', id };
        plain = Buffer.from(encodeMessage(m));
        if (rng.chance(pMutate / 4)) plain = mutate(rng, plain);
      } else {
        plain = Buffer.from(encodeMessage({ kind: 'request', id: i + 1, command: 'ping', payload: {}, stream: false }));
      }
      // A record holds at most 64 KiB: a random payload beyond that is cut (and so malformed).
      if (plain.length > MAX_RECORD_PLAINTEXT) plain = plain.subarray(0, MAX_RECORD_PLAINTEXT);
      inputs.push(plain.toString('hex'));
      if (kind === 'record') {
        const recOut: Buffer[] = [];
        if (rng.chance(0.1)) s.forge.keyUpdate(recOut);
        else s.forge.seal(RECORD_DATA, plain, recOut);
        sealed.push(Buffer.concat(recOut));
      } else sealData(s, plain);
      out.frames++;
    }
    if (kind === 'record') {
      // Tamper with the record stream: flip, cut, duplicate, swap, forge headers.
      const recs = sealed;
      const k = rng.int(7);
      const at = rng.int(recs.length);
      if (k === 0) recs[at]![rng.int(recs[at]!.length)]! ^= 1 << rng.int(8);
      else if (k === 1) recs[at] = recs[at]!.subarray(0, rng.int(recs[at]!.length));
      else if (k === 2) recs.splice(at, 0, recs[at]!);
      else if (k === 3 && recs.length > 1) [recs[0], recs[at]] = [recs[at]!, recs[0]!];
      else if (k === 4) {
        const h = Buffer.alloc(RECORD_HEADER_LEN);
        h[0] = rng.pick([0, RECORD_FINISHED, RECORD_DATA, RECORD_KEY_UPDATE, RECORD_CLOSE, 5, 0xff]);
        h.writeUInt32BE(rng.pick([0, 15, 16, 65552, 65553, 0xffffffff, rng.u32()]), 1);
        recs.splice(at, 0, Buffer.concat([h, rng.bytes(rng.size(64))]));
      } else if (k === 5) recs[at]![0] = rng.pick([RECORD_FINISHED, RECORD_KEY_UPDATE, RECORD_CLOSE, 0, 9]);
      else {
        const o: Buffer[] = [];
        s.forge.seal(rng.pick([RECORD_FINISHED, RECORD_KEY_UPDATE, RECORD_CLOSE]), rng.bytes(rng.size(40)), o);
        recs.splice(at, 0, Buffer.concat(o));
      }
      inputs.push(`records:${recs.map((r) => r.toString('hex')).join(',')}`);
      s.pending = Buffer.concat([s.pending, ...recs]);
      // The sentinel after tampering would be sealed at the wrong sequence number: send as is.
      s.wire.write(s.pending);
      s.pending = Buffer.alloc(0);
      const o = await settleRaw(s);
      checkAnswers(o, kind, inputs, out);
      if (!o.closed && !o.quiet) out.failures.push({ kind: 'no-answer', caseKind: kind, note: 'tampered records neither closed nor answered', inputs });
      return out;
    }
    const o = await flushAndSettle(s, 999_999);
    checkAnswers(o, kind, inputs, out);
    if (!o.answered && !o.closed) out.failures.push({ kind: 'no-answer', caseKind: kind, note: 'the sentinel ping was not answered and the connection stayed open', inputs });
    return out;
  } finally {
    s.wire.destroy();
  }
}

/** After record tampering: read until the connection closes, or all is quiet for a while. */
async function settleRaw(s: Session): Promise<Outcome & { quiet: boolean }> {
  const answers: Message[] = [];
  const events: ClientEvent[] = [];
  const deadline = Date.now() + ANSWER_TIMEOUT_MS;
  let lastData = Date.now();
  for (;;) {
    const got = s.wire.take();
    if (got.length > 0) {
      lastData = Date.now();
      s.client.receive(got);
    }
    for (;;) {
      const e = s.client.nextEvent();
      if (e.type === 'need-data') break;
      events.push(e);
      if (e.type === 'message') answers.push(e.message);
      else return { closed: true, answers, events, quiet: false };
    }
    if (s.wire.closed) return { closed: true, answers, events, quiet: false };
    // A tampering that happens to be harmless (a duplicate nobody reads yet) leaves it open.
    if (Date.now() - lastData > 1500) return { closed: false, answers, events, quiet: true };
    if (Date.now() > deadline) return { closed: false, answers, events, quiet: false };
    await s.wire.wait(500);
  }
}

async function caseBan(ctx: Ctx, ip: string): Promise<CaseResult> {
  const out: CaseResult = { frames: 1, failures: [], errorCodes: [], refused: false, banCheck: true };
  const wire = await Wire.open(ctx.port, ip);
  wire.write(HTTP_PROBE);
  const deadline = Date.now() + ANSWER_TIMEOUT_MS;
  while (!wire.closed && Date.now() < deadline) await wire.wait(1000);
  wire.destroy();
  // The ban is recorded at once; wait for it (not for a fixed time), then try again.
  let banned = false;
  while (!banned && Date.now() < deadline) {
    banned = (await ctx.askTarget({ type: 'banned', seq: 0, ip })).banned === true;
    if (!banned) await new Promise((r) => setTimeout(r, 20));
  }
  const again = await Wire.open(ctx.port, ip);
  const client = new ClientSession({ acceptServerKey: () => true });
  client.start();
  again.write(Buffer.concat(client.takeOutput()));
  while (!again.closed && Date.now() < deadline) await again.wait(1000);
  // Refused at accept: the plaintext refusal line (PROTOCOL.md 3.4) and the close, no ServerHello.
  const reply = again.take();
  again.destroy();
  const refused = reply.subarray(0, REFUSED_BANNED.length).equals(REFUSED_BANNED);
  if (!banned || !refused) {
    const why = !banned ? 'not banned' : `banned but answered ${JSON.stringify(reply.subarray(0, 64).toString('latin1'))}`;
    out.failures.push({ kind: 'not-banned', caseKind: 'ban', note: `${ip} sent HTTP and was ${why}`, inputs: [HTTP_PROBE.toString('hex')] });
  }
  return out;
}

// ---- the run --------------------------------------------------------------------------------

/** Daemon log lines (it logs errors only) that mean a fault: the connection guard fired, or a command failed (INTERNAL). */
const FAULT_LINE = /"message":"(connection handler failed|command failed|accepting a connection failed)"/;

function startTarget(onFault: (line: string) => void, env: Record<string, string> = {}): Promise<{ child: ChildProcess; ready: Extract<FromTarget, { type: 'ready' }>; stderr: string[] }> {
  const child = fork(new URL('./fuzz-target.js', import.meta.url), [], { execArgv: ['--expose-gc'], env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  const stderr: string[] = [];
  let partial = '';
  child.stderr!.on('data', (d: Buffer) => {
    const text = partial + d.toString('utf8');
    const lines = text.split('\n');
    partial = lines.pop()!;
    for (const l of lines) {
      stderr.push(l);
      if (stderr.length > 200) stderr.shift();
      if (FAULT_LINE.test(l)) onFault(l);
    }
  });
  return new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`fuzz target exited during start (${code}): ${stderr.join('\n')}`)));
    child.on('message', (m: FromTarget) => {
      if (m.type === 'ready') resolve({ child, ready: m, stderr });
    });
  });
}

/** Runs the fuzzer; resolves with a report (it does not throw for findings). */
export async function runFuzz(opts: FuzzOptions): Promise<FuzzReport> {
  const log = opts.log ?? (() => undefined);
  const started = Date.now();
  const faults: string[] = [];
  const { child, ready, stderr } = await startTarget((line) => {
    faults.push(line);
    log(`FAILURE fault: ${line}`);
  }, opts.targetEnv);
  let exited = false;
  let seq = 1;
  const waiting = new Map<number, (r: Extract<FromTarget, { type: 'reply' }>) => void>();
  child.on('message', (m: FromTarget) => {
    if (m.type !== 'reply') return;
    waiting.get(m.seq)?.(m);
    waiting.delete(m.seq);
  });
  const exitPromise = new Promise<void>((r) =>
    child.once('exit', () => {
      exited = true;
      for (const w of waiting.values()) w({ type: 'reply', seq: 0 });
      waiting.clear();
      r();
    }),
  );
  const askTarget = (m: ToTarget): Promise<Extract<FromTarget, { type: 'reply' }>> => {
    if (exited) return Promise.resolve({ type: 'reply', seq: 0 });
    const s = seq++;
    return new Promise((resolve) => {
      waiting.set(s, resolve);
      child.send({ ...m, seq: s });
    });
  };
  const report: FuzzReport = {
    seed: opts.seed,
    frames: 0,
    cases: 0,
    byKind: {},
    errorCodes: {},
    failures: [],
    daemonExited: false,
    banChecks: 0,
    bansMissed: 0,
    refusedAtAccept: 0,
    rss: { start: 0, warm: 0, peak: 0, end: 0 },
    heap: { startUsed: 0, startExternal: 0, endUsed: 0, endExternal: 0 },
    elapsedMs: 0,
    segments: [],
  };
  const m0 = await askTarget({ type: 'mem', seq: 0, gc: true });
  report.rss.start = m0.rss ?? 0;
  report.heap.startUsed = m0.heapUsed ?? 0;
  report.heap.startExternal = m0.external ?? 0;
  if (m0.mem) report.startMem = m0.mem;
  report.rss.peak = report.rss.start;
  let currentRss = report.rss.start;
  let segmentPeak = report.rss.start;
  const sampler = setInterval(() => {
    void askTarget({ type: 'mem', seq: 0 }).then((r) => {
      if (r.rss) currentRss = r.rss;
      if (r.rss && r.rss > report.rss.peak) report.rss.peak = r.rss;
      if (r.rss && r.rss > segmentPeak) segmentPeak = r.rss;
    });
  }, 500);

  // The command list, once, from server.info.
  let commands = ['ping', 'server.info', 'diag.echoStream'];
  {
    const s = await handshake(ready.port, ready.fingerprint, '127.3.0.1');
    if (s !== 'refused') {
      sealData(s, encodeMessage({ kind: 'request', id: 1, command: 'server.info', payload: {}, stream: false }));
      const o = await flushAndSettle(s, 2);
      const info = o.answers.find((a) => a.kind === 'response' && a.id === 1) as { payload?: { commands?: string[] } } | undefined;
      if (info?.payload?.commands) commands = info.payload.commands;
      s.wire.destroy();
    }
  }
  const ctx: Ctx = { port: ready.port, fingerprint: ready.fingerprint, club: ready.club, commands, askTarget };
  const master = new Rng(opts.seed);
  let nextIp = 0;
  let nextBanIp = 0;
  const poolIp = (): string => {
    const n = (nextIp++ % 65534) + 1;
    return `127.1.${n >> 8}.${n & 0xff}`;
  };
  const banIp = (): string => {
    const n = (nextBanIp++ % 65534) + 1;
    return `127.2.${n >> 8}.${n & 0xff}`;
  };
  const allKinds: [CaseKind, number][] = [
    ['hello', 20],
    ['message', 38],
    ['payload', 4],
    ['stream', 20],
    ['record', 16],
    ['ban', 2],
  ];
  const kinds = opts.only && opts.only.length > 0 ? allKinds.filter(([k]) => opts.only!.includes(k)) : allKinds;
  if (kinds.length === 0) throw new Error(`no such case kind; the kinds are ${allKinds.map(([k]) => k).join(', ')}`);
  const total = kinds.reduce((a, [, w]) => a + w, 0);
  let stop = false;
  let lastProgress = 0;
  const warmAt = Math.min(20_000, Math.floor(opts.frames / 10));
  let warmAsked = false;
  const progressEvery = opts.progressEvery ?? 0;
  let limit = 0;
  const worker = async (): Promise<void> => {
    while (!stop && report.frames < limit && !exited) {
      // Each case gets its own generator, seeded from the master: its inputs do not depend on
      // how the concurrent cases interleave.
      const caseRng = new Rng(master.u32());
      let w = caseRng.int(total);
      let kind: CaseKind = 'hello';
      for (const [k, weight] of kinds) {
        if (w < weight) {
          kind = k;
          break;
        }
        w -= weight;
      }
      let r: CaseResult;
      try {
        r =
          kind === 'hello'
            ? await caseHello(caseRng, ctx, poolIp())
            : kind === 'ban'
              ? await caseBan(ctx, banIp())
              : await caseSession(kind, caseRng, ctx, poolIp());
      } catch (e) {
        if (exited) break;
        // A handshake the daemon did not complete (it was busy or refused): not a finding by itself.
        r = { frames: 0, failures: [], errorCodes: [], refused: true };
        log(`case ${kind} could not run: ${(e as Error).message}`);
      }
      report.cases++;
      report.frames += r.frames;
      report.byKind[kind] = (report.byKind[kind] ?? 0) + r.frames;
      if (r.refused) report.refusedAtAccept++;
      if (r.banCheck) report.banChecks++;
      for (const c of r.errorCodes) report.errorCodes[c] = (report.errorCodes[c] ?? 0) + 1;
      for (const f of r.failures) {
        if (f.kind === 'not-banned') report.bansMissed++;
        report.failures.push(f);
        log(`FAILURE ${f.kind} (${f.caseKind}): ${f.note}`);
        for (const i of f.inputs) log(`  input ${i}`);
      }
      if (!warmAsked && report.frames >= warmAt) {
        warmAsked = true;
        void askTarget({ type: 'mem', seq: 0, gc: true }).then((m) => (report.rss.warm = m.rss ?? 0));
      }
      if (progressEvery > 0 && report.frames - lastProgress >= progressEvery) {
        lastProgress = report.frames;
        log(`${report.frames} frames, ${report.cases} cases, ${report.failures.length} failures, daemon RSS ${(currentRss / 1048576).toFixed(1)} MiB (peak ${(report.rss.peak / 1048576).toFixed(1)} MiB)`);
      }
    }
  };
  const concurrency = opts.concurrency ?? 16;
  const segmentFrames = Math.max(1, opts.segmentFrames ?? Math.max(1000, Math.ceil(opts.frames / 10)));
  const mib = (b: number): string => (b / 1048576).toFixed(1);
  while (!exited && report.frames < opts.frames) {
    limit = Math.min(opts.frames, report.frames + segmentFrames);
    await Promise.race([Promise.all(Array.from({ length: concurrency }, worker)), exitPromise]);
    if (exited) break;
    // The segment's cases have finished; let the daemon drop their connections (bounded wait),
    // then measure after a forced GC.
    let m = await askTarget({ type: 'mem', seq: 0 });
    for (let i = 0; i < 50 && !exited && (m.mem?.counts?.connections ?? 0) > 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      m = await askTarget({ type: 'mem', seq: 0 });
    }
    m = await askTarget({ type: 'mem', seq: 0, gc: true });
    if (!m.mem) break;
    const sample: SegmentSample = { frames: report.frames, peakRss: Math.max(segmentPeak, m.mem.rss), mem: m.mem };
    report.segments.push(sample);
    segmentPeak = m.mem.rss;
    const c = m.mem.counts;
    log(
      `segment ${report.segments.length}: ${report.frames} frames; after GC: RSS ${mib(m.mem.rss)} MiB (anon ${mib(m.mem.rssAnon)}, file ${mib(m.mem.rssFile)}), segment peak ${mib(sample.peakRss)} MiB, ` +
        `heap ${mib(m.mem.heapUsed)}/${mib(m.mem.heapTotal)} MiB, external ${mib(m.mem.external)} MiB, arrayBuffers ${mib(m.mem.arrayBuffers)} MiB` +
        (c ? `; stores ${c.storesOpen}/${c.storesMax}, clubs ${c.clubs}, connections ${c.connections}, pending ${c.pendingHandshakes}, pre-login ${c.preLoginSessions}, bans ${c.bans}, tracked ${c.trackedSources}, outbox ${c.outbox}, gathered ${c.gathered}, request keys ${c.requestKeys}, violation keys ${c.violationKeys}, detail keys ${c.detailKeys}` : ''),
    );
  }
  stop = true;
  clearInterval(sampler);
  if (exited) {
    report.daemonExited = true;
    report.failures.push({ kind: 'exit', caseKind: 'any', note: `the daemon process exited; its last output: ${stderr.join('\n').slice(-4000)}`, inputs: [] });
    log('FAILURE: the daemon process exited');
  } else {
    report.daemonStats = (await askTarget({ type: 'stats', seq: 0 })).stats;
    const m1 = await askTarget({ type: 'mem', seq: 0, gc: true });
    report.rss.end = m1.rss ?? 0;
    if (m1.mem) report.endMem = m1.mem;
    report.memory = memoryVerdict(report.segments);
    report.heap.endUsed = m1.heapUsed ?? 0;
    report.heap.endExternal = m1.external ?? 0;
    child.send({ type: 'exit', seq: 0 } satisfies ToTarget);
    await exitPromise;
  }
  // A fault is logged by the daemon without the input; the case that caused it is among those
  // running at that moment, whose inputs the other failure kinds print.
  for (const f of faults) report.failures.push({ kind: 'fault', caseKind: 'any', note: f.slice(0, 500), inputs: [] });
  const tail = stderr.join('\n');
  if (tail.length > 0) log(`daemon error log (tail):\n${tail.slice(-4000)}`);
  report.elapsedMs = Date.now() - started;
  return report;
}
