import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

/**
 * The alert mailer's persistent outbox, `<data>/outbox/`:
 *
 *   queue/<id>.json   a composed mail waiting for delivery (and its attempt count)
 *   gather/<id>.json  an alert held for the next digest of its group
 *   sent-local/<id>.eml  mails "delivered" without SMTP (the embedded default)
 *   attachments/<id>-<n>  files attached to a queued mail (removed with it)
 *   tmp/              half-written files; emptied on open
 *
 * Every file is written to tmp/, fsynced, renamed into place and the directory fsynced, so after
 * a crash a file is either wholly there or not at all. Ids sort by creation time.
 */
export interface OutboxAttachment {
  readonly filename: string;
  /** File name under attachments/. */
  readonly file: string;
  readonly contentType: string;
}

export interface OutboxMessage {
  readonly id: string;
  readonly createdAt: number;
  readonly group: string;
  readonly from: string;
  readonly to: readonly string[];
  readonly subject: string;
  readonly text: string;
  /** Stable across retries and restarts, so a receiver can drop a duplicate. */
  readonly messageId: string;
  readonly attempts: number;
  readonly lastError?: string;
  readonly lastAttemptAt?: number;
  readonly attachments?: readonly OutboxAttachment[];
}

export interface GatheredFile<T> {
  readonly id: string;
  readonly group: string;
  readonly createdAt: number;
  readonly item: T;
}

const QUEUE = 'queue';
const GATHER = 'gather';
const SENT_LOCAL = 'sent-local';
const TMP = 'tmp';
const ATTACH = 'attachments';

export function newOutboxId(now: number): string {
  return `${now.toString(36).padStart(9, '0')}-${randomBytes(6).toString('hex')}`;
}

async function fsyncDir(dir: string): Promise<void> {
  const h = await fsp.open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

export class Outbox {
  readonly dir: string;
  private readonly queued = new Map<string, OutboxMessage>();

  private constructor(dir: string) {
    this.dir = dir;
  }

  /** Open `<dir>`, creating its folders, dropping half-written files and loading the queue. */
  static async open(dir: string): Promise<Outbox> {
    for (const sub of [QUEUE, GATHER, SENT_LOCAL, TMP, ATTACH]) {
      await fsp.mkdir(path.join(dir, sub), { recursive: true, mode: 0o700 });
    }
    for (const f of await fsp.readdir(path.join(dir, TMP))) {
      await fsp.rm(path.join(dir, TMP, f), { force: true });
    }
    const box = new Outbox(dir);
    for (const m of await box.readAll<OutboxMessage>(QUEUE)) box.queued.set(m.id, m);
    // Attachments staged for a mail that never got queued (crash in between): drop them.
    const used = new Set([...box.queued.values()].flatMap((m) => (m.attachments ?? []).map((a) => a.file)));
    for (const f of await fsp.readdir(path.join(dir, ATTACH))) {
      if (!used.has(f)) await fsp.rm(path.join(dir, ATTACH, f), { force: true });
    }
    return box;
  }

  /** Messages waiting for delivery: fewest attempts first, then oldest first. */
  pending(): OutboxMessage[] {
    return [...this.queued.values()].sort((a, b) => a.attempts - b.attempts || (a.id < b.id ? -1 : 1));
  }

  get length(): number {
    return this.queued.size;
  }

  has(id: string): boolean {
    return this.queued.has(id);
  }

  /** Durably queue a message; resolves once it is on disk. */
  async enqueue(msg: OutboxMessage): Promise<void> {
    await this.writeDurable(QUEUE, `${msg.id}.json`, JSON.stringify(msg));
    this.queued.set(msg.id, msg);
  }

  /** Record a failed attempt (durably, so the count survives a restart). */
  async recordFailure(id: string, error: string, at: number): Promise<void> {
    const m = this.queued.get(id);
    if (!m) return;
    const next: OutboxMessage = { ...m, attempts: m.attempts + 1, lastError: error.slice(0, 300), lastAttemptAt: at };
    await this.writeDurable(QUEUE, `${id}.json`, JSON.stringify(next));
    this.queued.set(id, next);
  }

  /** The message was accepted: forget it (durably), and its attachments. */
  async remove(id: string): Promise<void> {
    const m = this.queued.get(id);
    this.queued.delete(id);
    await fsp.rm(path.join(this.dir, QUEUE, `${id}.json`), { force: true });
    await fsyncDir(path.join(this.dir, QUEUE));
    for (const a of m?.attachments ?? []) await fsp.rm(path.join(this.dir, ATTACH, a.file), { force: true });
  }

  /** Copy a file into attachments/ durably (before the mail naming it is queued); returns its name there. */
  async stageAttachment(src: string, file: string): Promise<string> {
    const tmp = path.join(this.dir, TMP, `${file}.${randomBytes(4).toString('hex')}`);
    await fsp.copyFile(src, tmp, fs.constants.COPYFILE_EXCL);
    const h = await fsp.open(tmp, 'r');
    try {
      await h.sync();
    } finally {
      await h.close();
    }
    await fsp.rename(tmp, path.join(this.dir, ATTACH, file));
    await fsyncDir(path.join(this.dir, ATTACH));
    return file;
  }

  attachmentPath(file: string): string {
    return path.join(this.dir, ATTACH, file);
  }

  /** Keep a copy of a locally "delivered" mail as an .eml file; returns its path. */
  async writeLocal(id: string, eml: Buffer | string): Promise<string> {
    await this.writeDurable(SENT_LOCAL, `${id}.eml`, eml);
    return path.join(this.dir, SENT_LOCAL, `${id}.eml`);
  }

  async gatherAdd<T>(g: GatheredFile<T>): Promise<void> {
    await this.writeDurable(GATHER, `${g.id}.json`, JSON.stringify(g));
  }

  async gatherList<T>(): Promise<GatheredFile<T>[]> {
    return this.readAll<GatheredFile<T>>(GATHER);
  }

  async gatherRemove(ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    for (const id of ids) await fsp.rm(path.join(this.dir, GATHER, `${id}.json`), { force: true });
    await fsyncDir(path.join(this.dir, GATHER));
  }

  private async readAll<T extends { id: string }>(sub: string): Promise<T[]> {
    const out: T[] = [];
    const dir = path.join(this.dir, sub);
    for (const f of (await fsp.readdir(dir)).sort()) {
      if (!f.endsWith('.json')) continue;
      try {
        const v = JSON.parse(await fsp.readFile(path.join(dir, f), 'utf8')) as T;
        if (typeof v.id === 'string' && `${v.id}.json` === f) out.push(v);
      } catch {
        // Renamed into place only when complete, so an unreadable file was not written by us:
        // set it aside rather than crash or drop it silently.
        await fsp.rename(path.join(dir, f), path.join(dir, `${f}.unreadable`)).catch(() => undefined);
      }
    }
    return out;
  }

  private async writeDurable(sub: string, name: string, data: string | Buffer): Promise<void> {
    const tmp = path.join(this.dir, TMP, `${name}.${randomBytes(4).toString('hex')}`);
    const h = await fsp.open(tmp, fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY, 0o600);
    try {
      await h.writeFile(data);
      await h.sync();
    } finally {
      await h.close();
    }
    await fsp.rename(tmp, path.join(this.dir, sub, name));
    await fsyncDir(path.join(this.dir, sub));
  }
}
