/**
 * `backup.lastSuccess.<dest>` in server.db (metrics and status: when a destination last received
 * an archive). A run over hundreds of clubs stores an archive every few hundred milliseconds;
 * writing server.db each time is a commit with an fsync on the daemon's event loop per club.
 * So the time is kept in memory and written at most every WRITE_EVERY_MS per destination, and
 * at the end of a run (flush); get() answers from memory, server.db after a restart.
 */
import type { ServerDb } from '../../storage/server/server-db.js';

/** How often, at most, a destination's last success is written to server.db during a run (ms). */
export const WRITE_EVERY_MS = 10_000;

export class LastSuccess {
  readonly #times = new Map<string, { t: number; written: number }>();

  constructor(private readonly server: Pick<ServerDb, 'setMeta'>) {}

  /** The last success of `dest` in ms, when one was noted in this process. */
  get(dest: string): number | undefined {
    return this.#times.get(dest)?.t;
  }

  /** An archive was stored at `dest` at time `t` (ms). */
  note(dest: string, t: number): void {
    const s = this.#times.get(dest) ?? { t, written: -Infinity };
    s.t = t;
    this.#times.set(dest, s);
    if (t - s.written >= WRITE_EVERY_MS) this.#write(dest, s);
  }

  /** Write every time not yet in server.db (end of a run). */
  flush(): void {
    for (const [dest, s] of this.#times) if (s.written !== s.t) this.#write(dest, s);
  }

  #write(dest: string, s: { t: number; written: number }): void {
    this.server.setMeta(`backup.lastSuccess.${dest}`, String(s.t));
    s.written = s.t;
  }
}
