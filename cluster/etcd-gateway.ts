/**
 * The one door to etcd (issue 14): an `etcd3` client with a deadline on every unary call and the
 * library's own retries turned off, plus two ways to call through it.
 *
 * Why: etcd3 1.1.2 retries every call up to three times on Unavailable, DeadlineExceeded,
 * Cancelled and Internal (its default global cockatiel policy), transactions included. An append
 * whose reply was lost would then be sent again and fail its compare although the first attempt
 * committed; and without deadlines a call to a killed etcd leader stalls for about 7 s in silence
 * (shared/CLUSTER.md, measured). So:
 * - `read(what, fn)`: idempotent calls (ranges, lease keepalives, puts of whole values) are retried
 *   here, each attempt under the per-call deadline, until `readBudgetMs` has passed;
 * - `once(what, fn)`: one attempt, for compare-and-swap transactions; a failure that may or may
 *   not have committed is reported as `EtcdOutcomeUnclear` and the caller settles it by reading.
 * The per-host circuit breaker of etcd3 stays: after three consecutive failures a member is skipped
 * for five seconds, so retries land on the members that are up.
 */
import { ExponentialBackoff, noop, isBrokenCircuitError, type IBackoff } from 'cockatiel';
import { Etcd3, EtcdLeaseInvalidError, isRecoverableError, type IOptions, type Namespace, type WatchBuilder, type Watcher } from 'etcd3';
import { ClusterError } from './errors.js';

export interface EtcdTls {
  /** PEM of the CA that signed the etcd members' certificates. */
  ca: Buffer;
  /** PEM client certificate and key (etcd `--client-cert-auth`). */
  cert?: Buffer;
  key?: Buffer;
}

export interface EtcdGatewayOptions {
  /** Client URLs of the etcd members, `http://host:port` or `https://host:port`. */
  endpoints: string[];
  tls?: EtcdTls;
  /** Deadline of each unary call in ms (default 500; the measured leader-kill stall is 1.7 s with it). */
  callTimeoutMs?: number;
  /** Total time a retried read may take before it fails with ETCD_UNAVAILABLE (default 5000 ms). */
  readBudgetMs?: number;
  /** Key prefix every key of this cluster lives under (default `commusic/`). */
  prefix?: string;
}

/** A transaction that failed in a way that leaves open whether it committed. */
export class EtcdOutcomeUnclear extends Error {
  constructor(what: string, options?: { cause?: unknown }) {
    super(`etcd call "${what}" ended without a clear outcome`, options);
    this.name = 'EtcdOutcomeUnclear';
  }
}

const ENDPOINT = /^(https?):\/\/([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):([0-9]{1,5})$/;

/** Parse a comma-separated endpoint list (`--cluster-etcd`); throws INVALID_ARGUMENT on a bad entry. */
export function parseEndpoints(list: string): string[] {
  const out = list.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
  if (out.length === 0 || out.length > 15) throw new ClusterError('INVALID_ARGUMENT', 'etcd endpoint list must name 1 to 15 URLs');
  for (const e of out) {
    const m = ENDPOINT.exec(e);
    if (!m || Number(m[3]) < 1 || Number(m[3]) > 65535) {
      throw new ClusterError('INVALID_ARGUMENT', `etcd endpoint "${e.slice(0, 80)}" is not http(s)://HOST:PORT`);
    }
  }
  return out;
}

/** Whether an error from etcd3 is a transport or availability failure (worth another attempt). */
export function isTransient(e: unknown): boolean {
  if (!(e instanceof Error)) return false;
  if (e instanceof EtcdLeaseInvalidError) return false;
  return isRecoverableError(e) || isBrokenCircuitError(e) || /no hosts|closed|timed out|leader changed|no leader/i.test(e.message);
}

/**
 * Cancel a watcher without hanging: etcd3's cancel waits for an event that never comes when etcd
 * already cancelled the watch (compaction), so wait at most `ms`.
 */
export async function cancelWatcher(w: Watcher, ms = 1000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    w.cancel().catch(() => undefined),
    new Promise<void>((r) => {
      timer = setTimeout(r, ms);
      timer.unref?.();
    }),
  ]);
  if (timer) clearTimeout(timer);
}

/**
 * Create a watch, each attempt bounded: etcd3's `create()` waits for the watch stream to confirm
 * without any deadline (streams get none), so a watch on a stream that never comes up would hold
 * its caller (a follower's start, a club's role change) for as long. An attempt past
 * max(4 x call timeout, 1 s) fails as transient and is retried within the read budget; a watcher
 * that connects after its attempt gave up is cancelled.
 * @throws ClusterError ETCD_UNAVAILABLE when no attempt connected within the read budget.
 */
export function createWatch(gw: EtcdGateway, what: string, build: () => WatchBuilder): Promise<Watcher> {
  const attemptMs = Math.max(4 * gw.callTimeoutMs, 1000);
  return gw.read(what, () => {
    const pending = build().create();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        pending.then((w) => cancelWatcher(w), () => undefined);
        reject(new Error(`watch "${what}" timed out`));
      }, attemptMs);
    });
    return Promise.race([pending, late]).finally(() => clearTimeout(timer));
  });
}

export class EtcdGateway {
  /** The namespaced client: every key below is relative to the prefix. */
  readonly kv: Namespace;
  readonly callTimeoutMs: number;
  readonly readBudgetMs: number;
  private readonly root: Etcd3;
  private closed = false;

  constructor(opts: EtcdGatewayOptions) {
    if (opts.endpoints.length === 0) throw new ClusterError('INVALID_ARGUMENT', 'no etcd endpoints');
    this.callTimeoutMs = opts.callTimeoutMs ?? 500;
    this.readBudgetMs = opts.readBudgetMs ?? 5000;
    const timeout = this.callTimeoutMs;
    const options: IOptions = {
      hosts: opts.endpoints,
      dialTimeout: timeout,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeout }),
      // Watches resume within a second of a member coming back (etcd3's default waits up to 30 s).
      faultHandling: { global: noop, watchBackoff: new ExponentialBackoff({ initialDelay: 50, maxDelay: 1000 }) as unknown as IBackoff<unknown> },
    };
    if (opts.tls) {
      options.credentials = { rootCertificate: opts.tls.ca, ...(opts.tls.key ? { privateKey: opts.tls.key } : {}), ...(opts.tls.cert ? { certChain: opts.tls.cert } : {}) };
    }
    this.root = new Etcd3(options);
    this.kv = this.root.namespace(opts.prefix ?? 'commusic/');
  }

  /**
   * Run an idempotent call, retrying transient failures with a short backoff (25 ms doubling to
   * 200 ms) until `readBudgetMs` has passed.
   * @throws ClusterError ETCD_UNAVAILABLE when the budget runs out; other errors pass through.
   */
  async read<T>(what: string, fn: () => Promise<T>, budgetMs = this.readBudgetMs): Promise<T> {
    const deadline = Date.now() + budgetMs;
    let delay = 25;
    for (;;) {
      if (this.closed) throw new ClusterError('CLOSED', `etcd client closed during "${what}"`);
      try {
        return await fn();
      } catch (e) {
        if (!isTransient(e)) throw e;
        if (Date.now() + delay > deadline) {
          throw new ClusterError('ETCD_UNAVAILABLE', `etcd did not answer "${what}" within ${budgetMs} ms`, { cause: e });
        }
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 200);
      }
    }
  }

  /**
   * Run a call exactly once. A transient failure becomes `EtcdOutcomeUnclear` (the request may have
   * committed); other errors pass through.
   */
  async once<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw new ClusterError('CLOSED', `etcd client closed before "${what}"`);
    try {
      return await fn();
    } catch (e) {
      if (isTransient(e)) throw new EtcdOutcomeUnclear(what, { cause: e });
      throw e;
    }
  }

  /** Compact etcd's history up to `revision` (drops deleted values, e.g. a shredded club's log). */
  async compact(revision: string, physical = true): Promise<void> {
    await this.read('compact', () => this.kv.kv.compact({ revision, physical }, { deadline: Date.now() + Math.max(this.callTimeoutMs, 5000) }));
  }

  /** The current revision of the store (a linearizable read). */
  async revision(): Promise<string> {
    const r = await this.read('revision', () => this.kv.get('\u0000revision-probe').exec());
    return r.header.revision;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.root.close();
  }
}
