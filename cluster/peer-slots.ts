/**
 * Transfer slots of the peer channel (cluster/peer-channel.ts): how many transfers a member runs
 * at once as caller (waiting for a slot until the call's deadline) and serves at once (no wait: a
 * caller past the bound is answered BUSY), and a served stream that holds its slot until it ends.
 */
import { ClusterError } from './errors.js';

/** A counting semaphore: `take` waits for a slot until `deadline`, `tryTake` does not wait. */
export class Slots {
  private used = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(private readonly max: number) {}

  tryTake(): (() => void) | undefined {
    if (this.used >= this.max) return undefined;
    this.used++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.used--;
      this.waiting.shift()?.();
    };
  }

  async take(deadline: number): Promise<() => void> {
    for (;;) {
      const r = this.tryTake();
      if (r) return r;
      const left = deadline - Date.now();
      if (left <= 0) throw new ClusterError('PEER_UNAVAILABLE', 'no free peer transfer slot before the deadline');
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(t);
          resolve();
        };
        // A waiter whose deadline passed leaves the line, so a freed slot wakes one still waiting.
        const t = setTimeout(() => {
          const i = this.waiting.indexOf(wake);
          if (i >= 0) this.waiting.splice(i, 1);
          resolve();
        }, left);
        this.waiting.push(wake);
      });
    }
  }
}

/**
 * The stream of a served pull: the slot is given back when it ends, fails or is closed — also
 * when it is closed before it ever started (a generator's `finally` would not run then, and a
 * caller that gave up before the first chunk leaked the slot for good). Closing it also closes
 * the source (an open file).
 */
export function slotHeldUntilDone(inner: AsyncGenerator<Uint8Array>, source: AsyncIterable<Uint8Array>, release: () => void): AsyncIterable<Uint8Array> {
  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    release();
  };
  const it: AsyncIterator<Uint8Array> = {
    async next() {
      try {
        const r = await inner.next();
        if (r.done) finish();
        return r;
      } catch (e) {
        finish();
        throw e;
      }
    },
    async return() {
      finish();
      await inner.return(undefined).catch(() => undefined);
      const s = source as { destroy?: () => void; return?: () => unknown };
      if (typeof s.destroy === 'function') s.destroy();
      return { done: true, value: undefined };
    },
  };
  return { [Symbol.asyncIterator]: () => it };
}
