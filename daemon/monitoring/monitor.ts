import { connect } from '../../client/connection.js';
import { nullLogger, type Logger } from '../common/log.js';

/**
 * The availability probe (`commusicctl monitor`): every interval, a real handshake and `ping`
 * against each target. After `failures` consecutive failed probes the target is "down" and one
 * outage alert goes out; the first successful probe after that sends one recovery alert. Nothing
 * else is mailed: one alert per state change per target, however long the outage lasts.
 *
 * The state machine (`step`) is pure: state + probe result + time in, state and at most one
 * transition out. `Monitor` adds the schedule, the probe and the alert sink, all injectable.
 */
export interface Target {
  readonly host: string;
  readonly port: number;
  /** Expected server key fingerprint (SHA-256 hex). */
  readonly fingerprint: string;
  /** HOST:PORT as the operator wrote it; names the target in mails and groups. */
  readonly label: string;
}

export type ProbeResult = { readonly ok: true; readonly rttMs: number } | { readonly ok: false; readonly error: string };
export type Probe = (target: Target, timeoutMs: number) => Promise<ProbeResult>;

export type TargetStatus = 'unknown' | 'up' | 'down';

export interface TargetState {
  readonly status: TargetStatus;
  /** Consecutive failed probes (0 after a success). */
  readonly failures: number;
  /** Time of the first failure of the current run of failures. */
  readonly failingSince?: number;
  readonly lastError?: string;
  readonly lastOkAt?: number;
  readonly lastRttMs?: number;
  /** Time the target went down (the outage alert). */
  readonly downAt?: number;
}

export type Transition =
  | { readonly kind: 'outage'; readonly failures: number; readonly failingSince: number; readonly lastError: string; readonly lastOkAt?: number }
  | { readonly kind: 'recovery'; readonly downAt: number; readonly failingSince: number; readonly rttMs: number };

export const INITIAL_STATE: TargetState = { status: 'unknown', failures: 0 };

/** One probe result applied to one target's state. */
export function step(state: TargetState, result: ProbeResult, now: number, threshold: number): { state: TargetState; transition?: Transition } {
  if (result.ok) {
    const up: TargetState = { status: 'up', failures: 0, lastOkAt: now, lastRttMs: result.rttMs };
    if (state.status === 'down') {
      const downAt = state.downAt ?? now;
      return { state: up, transition: { kind: 'recovery', downAt, failingSince: state.failingSince ?? downAt, rttMs: result.rttMs } };
    }
    return { state: up };
  }
  const failures = state.failures + 1;
  const failingSince = state.failures === 0 ? now : (state.failingSince ?? now);
  const next: TargetState = { ...state, failures, failingSince, lastError: result.error };
  if (state.status !== 'down' && failures >= threshold) {
    const transition: Transition = {
      kind: 'outage',
      failures,
      failingSince,
      lastError: result.error,
      ...(state.lastOkAt !== undefined ? { lastOkAt: state.lastOkAt } : {}),
    };
    return { state: { ...next, status: 'down', downAt: now }, transition };
  }
  return { state: next };
}

/** The part of the alert mailer the monitor uses (daemon/mail/mailer.ts AlertMailer fits). */
export interface MonitorAlert {
  readonly group: string;
  readonly kind: 'monitor-outage' | 'monitor-recovery';
  readonly subject: string;
  readonly lines: readonly string[];
  readonly severity: 'info' | 'warning' | 'critical';
  readonly sources?: readonly string[];
  readonly time?: number;
}
export interface AlertSink {
  alert(a: MonitorAlert): void | Promise<void>;
}

/** The outage or recovery mail for one transition. */
export function transitionAlert(target: Target, t: Transition, site: string, now: number, intervalMs: number): MonitorAlert {
  const iso = (x: number) => new Date(x).toISOString();
  if (t.kind === 'outage') {
    return {
      group: `outage:${target.label}`,
      kind: 'monitor-outage',
      severity: 'critical',
      subject: `server ${target.label} UNREACHABLE from ${site} (${t.failures} failed probes)`,
      sources: [target.label],
      time: now,
      lines: [
        `Target:        ${target.label}`,
        `Probe site:    ${site}`,
        `Failing since: ${iso(t.failingSince)} (first failed probe)`,
        `Failed probes: ${t.failures} in a row, one every ${formatMs(intervalMs)}`,
        `Last error:    ${t.lastError}`,
        `Last success:  ${t.lastOkAt !== undefined ? iso(t.lastOkAt) : 'none since this monitor started'}`,
        '',
        'No handshake and ping with this server succeeded. Clients of the clubs on it cannot work.',
        'Check the other probe site: if it reports the same, the server or its network is down;',
        'if not, the path from this site is. See docs/OPERATIONS.md, "Alert mails".',
        'You get one more mail when the server answers again, and none before that.',
      ],
    };
  }
  return {
    group: `recovery:${target.label}`,
    kind: 'monitor-recovery',
    severity: 'info',
    subject: `server ${target.label} reachable again from ${site} (down ${formatMs(now - t.failingSince)})`,
    sources: [target.label],
    time: now,
    lines: [
      `Target:        ${target.label}`,
      `Probe site:    ${site}`,
      `Failing since: ${iso(t.failingSince)}`,
      `Reported down: ${iso(t.downAt)}`,
      `Back up:       ${iso(now)} (ping ${t.rttMs.toFixed(1)} ms)`,
      '',
      'Handshake and ping succeed again. Check the daemon log and `commusicctl status` for the cause.',
    ],
  };
}

export function formatMs(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return ms < 1000 ? `${Math.max(0, Math.round(ms))}ms` : `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${s % 60 ? `${s % 60}s` : ''}`;
  const h = Math.floor(m / 60);
  return `${h}h${m % 60 ? `${m % 60}m` : ''}`;
}

/** Parse "HOST:PORT[,HOST:PORT...]" with one fingerprint for all or one per target. */
export function parseTargets(spec: string, fingerprints: string): Target[] {
  const parts = spec.split(',').map((s) => s.trim()).filter(Boolean);
  const fps = fingerprints.split(',').map((s) => s.trim()).filter(Boolean);
  if (parts.length === 0) throw new Error('no target given');
  if (fps.length !== 1 && fps.length !== parts.length) {
    throw new Error(`give one fingerprint for all targets or one per target (${parts.length} targets, ${fps.length} fingerprints)`);
  }
  return parts.map((label, i) => {
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s\[\]]+)):(\d{1,5})$/.exec(label);
    if (!m || Number(m[3]) > 65535 || Number(m[3]) === 0) throw new Error(`"${label}" is not HOST:PORT`);
    return { host: (m[1] ?? m[2])!, port: Number(m[3]), fingerprint: (fps.length === 1 ? fps[0] : fps[i])!, label };
  });
}

/**
 * Pins learned from verified `identity.keys` notices (docs/PROTOCOL.md 6.3), per target: a
 * monitor that runs through an identity key rollover follows it like any pinned client.
 */
const learnedPins = new Map<string, string[]>();

/** The real probe: handshake with the pinned key (or the keys a rollover announced), one ping, close. */
export const clientProbe: Probe = async (target, timeoutMs) => {
  const started = performance.now();
  let conn: Awaited<ReturnType<typeof connect>> | undefined;
  let finished = false;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'PROBE_TIMEOUT' })), timeoutMs);
  });
  try {
    const attempt = (async () => {
      const key = `${target.label} ${target.fingerprint}`;
      const c = await connect({
        host: target.host,
        port: target.port,
        fingerprints: learnedPins.get(key) ?? [target.fingerprint],
        onPinsChanged: (fps) => learnedPins.set(key, fps),
        connectTimeoutMs: timeoutMs,
        requestTimeoutMs: timeoutMs,
      });
      // Connected only after the time limit: close at once, the probe already failed.
      if (finished) return void c.close().catch(() => undefined);
      conn = c;
      await c.ping();
    })();
    attempt.catch(() => undefined);
    await Promise.race([attempt, timeout]);
    return { ok: true, rttMs: performance.now() - started };
  } catch (e) {
    const err = e as { code?: string; message?: string };
    return { ok: false, error: err.code ? `${err.code}: ${err.message ?? ''}` : (err.message ?? String(e)) };
  } finally {
    finished = true;
    if (timer) clearTimeout(timer);
    if (conn) await conn.close().catch(() => undefined);
  }
};

export interface MonitorEvent {
  readonly target: Target;
  readonly time: number;
  readonly result: ProbeResult;
  readonly state: TargetState;
  readonly transition?: Transition;
}

export interface MonitorOptions {
  readonly targets: readonly Target[];
  readonly intervalMs: number;
  /** Consecutive failures before the outage alert (>= 1). */
  readonly failures: number;
  /** Per-probe time limit; defaults to min(10 s, interval / 2). */
  readonly timeoutMs?: number;
  readonly sink: AlertSink;
  /** Where this monitor runs; named in every mail. */
  readonly site: string;
  readonly probe?: Probe;
  readonly now?: () => number;
  readonly logger?: Logger;
  /** Every probe result (for output and tests). */
  readonly onProbe?: (e: MonitorEvent) => void;
}

export class Monitor {
  private readonly states = new Map<string, TargetState>();
  private readonly probe: Probe;
  private readonly now: () => number;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private round: Promise<void> | undefined;
  private readonly pendingAlerts = new Set<Promise<void>>();

  constructor(private readonly opts: MonitorOptions) {
    if (!(opts.failures >= 1)) throw new Error('failures must be at least 1');
    if (!(opts.intervalMs >= 10)) throw new Error('interval must be at least 10 ms');
    this.probe = opts.probe ?? clientProbe;
    this.now = opts.now ?? Date.now;
    this.log = opts.logger ?? nullLogger();
    for (const t of opts.targets) this.states.set(t.label, INITIAL_STATE);
  }

  get timeoutMs(): number {
    return this.opts.timeoutMs ?? Math.min(10_000, Math.floor(this.opts.intervalMs / 2));
  }

  state(label: string): TargetState | undefined {
    return this.states.get(label);
  }

  /** Probe all targets once (in parallel) and apply the results. */
  async runRound(): Promise<MonitorEvent[]> {
    const results = await Promise.all(this.opts.targets.map(async (t) => ({ t, r: await this.probe(t, this.timeoutMs) })));
    const time = this.now();
    const events: MonitorEvent[] = [];
    for (const { t, r } of results) {
      const { state, transition } = step(this.states.get(t.label) ?? INITIAL_STATE, r, time, this.opts.failures);
      this.states.set(t.label, state);
      const e: MonitorEvent = { target: t, time, result: r, state, ...(transition ? { transition } : {}) };
      events.push(e);
      if (transition) {
        this.log.warn(transition.kind === 'outage' ? 'target down' : 'target up', { event: `monitor-${transition.kind}`, target: t.label, site: this.opts.site });
        this.send(transitionAlert(t, transition, this.opts.site, time, this.opts.intervalMs));
      }
      this.opts.onProbe?.(e);
    }
    return events;
  }

  /** Probe now and then every interval until stop(). */
  start(): void {
    if (this.running) return;
    this.running = true;
    const first = this.now();
    let k = 0;
    const tick = () => {
      this.round = this.runRound()
        .then(() => undefined)
        .catch((e: unknown) => {
          this.log.error('monitor round failed', { error: (e as Error).message });
        })
        .finally(() => {
          this.round = undefined;
          if (!this.running) return;
          // Keep to the grid (first + k * interval); a round that overran starts the next at once.
          k = Math.max(k + 1, Math.floor((this.now() - first) / this.opts.intervalMs));
          this.timer = setTimeout(tick, Math.max(0, first + k * this.opts.intervalMs - this.now()));
        });
    };
    tick();
  }

  /** Stop probing; waits for the round in progress and for alerts being handed to the sink. */
  async stop(): Promise<void> {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.round) await this.round;
    await Promise.allSettled([...this.pendingAlerts]);
  }

  private send(a: MonitorAlert): void {
    const p = Promise.resolve()
      .then(() => this.opts.sink.alert(a))
      .catch((e: unknown) => {
        this.log.error('monitor alert could not be queued', { event: 'mail-error', group: a.group, error: (e as Error).message });
      })
      .finally(() => this.pendingAlerts.delete(p));
    this.pendingAlerts.add(p);
  }
}
