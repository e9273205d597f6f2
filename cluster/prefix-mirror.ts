/**
 * A live local copy of every key under one etcd prefix (issue 14): list, then watch from the
 * listed revision + 1; a watch etcd cancels (history compacted past it) or that cannot resume
 * leads to a full list again, reporting the differences as changes. Used for members, placement,
 * drain marks and the club registry, where every server needs the whole (small) set.
 */
import { EventEmitter } from 'node:events';
import type { Watcher } from 'etcd3';
import { cancelWatcher, createWatch, type EtcdGateway } from './etcd-gateway.js';

/** Events: 'change' (key relative to the prefix, value or undefined when deleted), 'resync'. */
export class PrefixMirror extends EventEmitter {
  private readonly map = new Map<string, Buffer>();
  private watcher: Watcher | undefined;
  private stopped = false;
  private resyncing: Promise<void> | undefined;
  /** Full lists after the first (compaction, lost watch). */
  resyncs = 0;

  constructor(
    private readonly gw: EtcdGateway,
    readonly prefix: string,
  ) {
    super();
  }

  get(key: string): Buffer | undefined {
    return this.map.get(key);
  }

  entries(): Array<[string, Buffer]> {
    return [...this.map.entries()];
  }

  get size(): number {
    return this.map.size;
  }

  async start(): Promise<void> {
    await this.resync();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const w = this.watcher;
    this.watcher = undefined;
    if (w) await cancelWatcher(w);
  }

  private set(key: string, value: Buffer | undefined): void {
    const had = this.map.get(key);
    if (value === undefined) {
      if (!had) return;
      this.map.delete(key);
    } else {
      if (had && had.equals(value)) return;
      this.map.set(key, value);
    }
    this.emit('change', key, value);
  }

  private rel(key: Buffer | string): string {
    const k = typeof key === 'string' ? key : key.toString('utf8');
    return k.startsWith(this.prefix) ? k.slice(this.prefix.length) : k;
  }

  private resync(): Promise<void> {
    if (this.resyncing) return this.resyncing;
    this.resyncing = this.doResync().finally(() => (this.resyncing = undefined));
    return this.resyncing;
  }

  private async doResync(): Promise<void> {
    if (this.stopped) return;
    const old = this.watcher;
    this.watcher = undefined;
    if (old) await cancelWatcher(old);
    const res = await this.gw.read(`list ${this.prefix}`, () => this.gw.kv.getAll().prefix(this.prefix).exec());
    const seen = new Set<string>();
    for (const kv of res.kvs) {
      const k = this.rel(kv.key);
      seen.add(k);
      this.set(k, kv.value);
    }
    for (const k of [...this.map.keys()]) if (!seen.has(k)) this.set(k, undefined);
    const from = String(BigInt(res.header.revision) + 1n);
    const w = await createWatch(this.gw, `watch ${this.prefix}`, () => this.gw.kv.watch().prefix(this.prefix).startRevision(from));
    if (this.stopped) {
      await cancelWatcher(w);
      return;
    }
    this.watcher = w;
    w.on('put', (kv) => this.set(this.rel(kv.key), kv.value));
    w.on('delete', (kv) => this.set(this.rel(kv.key), undefined));
    w.on('error', () => {
      if (this.stopped || this.watcher !== w) return;
      this.watcher = undefined;
      this.resyncs++;
      const retry = (): void => {
        if (this.stopped) return;
        this.resync()
          .then(() => this.emit('resync'))
          .catch(() => setTimeout(retry, 250).unref?.());
      };
      retry();
    });
  }
}
