/**
 * Backup destinations: where server archives go. Each is written atomically (a temporary name,
 * then a rename) and read back to verify (SHA-256 of what the destination returns equals what
 * was written) before a copy counts as stored. Archive names are
 * `<clubId>/<clubId>-<YYYYMMDDTHHMMSSmmmZ>.cmbk`, so listing gives club and time without opening.
 *
 * Kinds: `local` (a directory; operators mount other sites there) and `sftp` (an SSH server,
 * key authentication, host key pinned by SHA-256 fingerprint).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import SftpClient from 'ssh2-sftp-client';
import { z } from 'zod';
import { fsyncDirAsync } from '../../crypto/atomic-file.js';
import { ARCHIVE_SUFFIX } from '../../storage/backup/backup-archive.js';
import { BackupError } from '../../storage/backup/backup-errors.js';

export const LocalDestinationSchema = z.object({ name: z.string().regex(/^[A-Za-z0-9_.-]{1,40}$/), kind: z.literal('local'), path: z.string().min(1) }).strict();
export const SftpDestinationSchema = z
  .object({
    name: z.string().regex(/^[A-Za-z0-9_.-]{1,40}$/),
    kind: z.literal('sftp'),
    host: z.string().min(1),
    port: z.number().int().min(1).max(65535).default(22),
    username: z.string().min(1),
    /** Private key file (OpenSSH or PEM). */
    privateKeyFile: z.string().min(1),
    /** Folder on the server (created when missing). */
    path: z.string().min(1),
    /** SHA-256 of the server's host key, base64 as `ssh-keygen -l` prints it (with or without "SHA256:"). */
    hostKeySha256: z.string().min(20),
    timeoutMs: z.number().int().min(500).max(300_000).default(20_000),
  })
  .strict();
export const DestinationSchema = z.discriminatedUnion('kind', [LocalDestinationSchema, SftpDestinationSchema]);
export type DestinationConfig = z.input<typeof DestinationSchema>;

export interface ArchiveEntry {
  /** Relative name: `<club>/<club>-<time>.cmbk`. */
  name: string;
  clubId: string;
  time: Date;
  size: number;
}

export interface BackupDestination {
  readonly name: string;
  readonly kind: 'local' | 'sftp';
  /** Store a local file under `name` atomically, then read it back and compare SHA-256. */
  put(name: string, file: string, sha256: string): Promise<void>;
  list(clubId?: string): Promise<ArchiveEntry[]>;
  get(name: string): Promise<Readable>;
  delete(name: string): Promise<void>;
  close(): Promise<void>;
}

const NAME_RE = /^([a-z0-9][a-z0-9-]{0,63})\/\1-(\d{8}T\d{9}Z)\.cmbk$/;

export function archiveName(clubId: string, time: Date): string {
  const t = time.toISOString().replace(/[-:.]/g, '');
  return `${clubId}/${clubId}-${t}${ARCHIVE_SUFFIX}`;
}

export function parseArchiveName(name: string): { clubId: string; time: Date } | undefined {
  const m = NAME_RE.exec(name);
  if (!m) return undefined;
  const t = m[2]!;
  const iso = `${t.slice(0, 4)}-${t.slice(4, 6)}-${t.slice(6, 8)}T${t.slice(9, 11)}:${t.slice(11, 13)}:${t.slice(13, 15)}.${t.slice(15, 18)}Z`;
  const time = new Date(iso);
  return Number.isNaN(time.getTime()) ? undefined : { clubId: m[1]!, time };
}

function checkName(name: string): void {
  if (!parseArchiveName(name)) throw new BackupError('NOT_FOUND', `"${name}" is not an archive name (<club>/<club>-<time>.cmbk)`);
}

/** Bytes read and hashed per step by fileSha256: about 0.1 ms of SHA-256 on the event loop. */
const VERIFY_CHUNK = 256 * 1024;
/** Read buffers kept between read-backs (one per concurrent put; a run has `parallelism` of them). */
const spareBuffers: Buffer[] = [];

/**
 * SHA-256 (hex) of a local file, read in VERIFY_CHUNK steps into one buffer kept for the next
 * call: a read stream allocates a new 64 KiB buffer per chunk, and a nightly run reads back
 * hundreds of MB on the daemon's event loop; those buffers made V8 run a full GC every ~0.2 s
 * (external memory pressure), pausing requests for up to ~25 ms (docs/BENCHMARKS.md, "Request
 * path and backups"). Errors: the file system's (ENOENT, EIO).
 */
async function fileSha256(file: string): Promise<string> {
  const h = createHash('sha256');
  const buf = spareBuffers.pop() ?? Buffer.allocUnsafeSlow(VERIFY_CHUNK);
  try {
    const fh = await fsp.open(file, 'r');
    try {
      for (let pos = 0; ; ) {
        const { bytesRead } = await fh.read(buf, 0, VERIFY_CHUNK, pos);
        if (bytesRead === 0) break;
        h.update(buf.subarray(0, bytesRead));
        pos += bytesRead;
      }
    } finally {
      await fh.close();
    }
  } finally {
    if (spareBuffers.length < 4) spareBuffers.push(buf);
  }
  return h.digest('hex');
}

export class LocalDestination implements BackupDestination {
  readonly kind = 'local' as const;
  constructor(
    readonly name: string,
    readonly root: string,
  ) {}

  async put(name: string, file: string, sha256: string): Promise<void> {
    checkName(name);
    const target = path.join(this.root, name);
    const dir = path.dirname(target);
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const tmp = path.join(dir, `.${path.basename(name)}.tmp-${randomBytes(6).toString('hex')}`);
    try {
      await fsp.copyFile(file, tmp);
      const fh = await fsp.open(tmp, 'r');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fsp.rename(tmp, target);
      await fsyncDirAsync(dir);
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      throw e;
    }
    const back = await fileSha256(target);
    if (back !== sha256) {
      await fsp.rm(target, { force: true });
      throw new BackupError('VERIFY_FAILED', `destination ${this.name}: ${name} reads back with another SHA-256; removed`);
    }
  }

  async list(clubId?: string): Promise<ArchiveEntry[]> {
    const out: ArchiveEntry[] = [];
    let clubs: string[];
    try {
      clubs = clubId ? [clubId] : await fsp.readdir(this.root);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    for (const c of clubs) {
      let files: string[];
      try {
        files = await fsp.readdir(path.join(this.root, c));
      } catch {
        continue;
      }
      for (const f of files) {
        const name = `${c}/${f}`;
        const p = parseArchiveName(name);
        if (!p) continue;
        const st = await fsp.stat(path.join(this.root, name));
        out.push({ name, clubId: p.clubId, time: p.time, size: st.size });
      }
    }
    return out.sort((a, b) => a.time.getTime() - b.time.getTime() || (a.name < b.name ? -1 : 1));
  }

  async get(name: string): Promise<Readable> {
    checkName(name);
    const p = path.join(this.root, name);
    await fsp.access(p).catch(() => {
      throw new BackupError('NOT_FOUND', `destination ${this.name} has no archive ${name}`);
    });
    return createReadStream(p, { highWaterMark: 1 << 20 });
  }

  async delete(name: string): Promise<void> {
    checkName(name);
    await fsp.rm(path.join(this.root, name), { force: true });
  }

  async close(): Promise<void> {}
}

/** SFTP: one connection per operation batch, opened lazily, closed by close(). */
export class SftpDestination implements BackupDestination {
  readonly kind = 'sftp' as const;
  readonly name: string;
  readonly #cfg: z.output<typeof SftpDestinationSchema>;
  #client: Promise<SftpClient> | undefined;

  constructor(cfg: z.output<typeof SftpDestinationSchema>) {
    this.name = cfg.name;
    this.#cfg = cfg;
  }

  #connect(): Promise<SftpClient> {
    if (this.#client) return this.#client;
    const c = this.#cfg;
    const want = c.hostKeySha256.replace(/^SHA256:/, '').replace(/=+$/, '');
    const client = new SftpClient(`commusic-backup-${c.name}`);
    const p = client
      .connect({
        host: c.host,
        port: c.port,
        username: c.username,
        privateKey: readFileSync(c.privateKeyFile),
        readyTimeout: c.timeoutMs,
        timeout: c.timeoutMs,
        retries: 0,
        hostVerifier: (key: Buffer) => createHash('sha256').update(key).digest('base64').replace(/=+$/, '') === want,
      } as SftpClient.ConnectOptions)
      .then(() => client);
    p.catch(() => {
      if (this.#client === p) this.#client = undefined;
    });
    client.on('error', () => {
      this.#client = undefined;
    });
    client.on('end', () => {
      this.#client = undefined;
    });
    this.#client = p;
    return p;
  }

  #remote(name: string): string {
    return path.posix.join(this.#cfg.path, name);
  }

  async #op<T>(what: string, fn: (c: SftpClient) => Promise<T>): Promise<T> {
    try {
      return await fn(await this.#connect());
    } catch (e) {
      if (e instanceof BackupError) throw e;
      const c = await this.#client?.catch(() => undefined);
      this.#client = undefined;
      await c?.end().catch(() => undefined);
      throw new BackupError('DESTINATION_FAILED', `destination ${this.name} (sftp ${this.#cfg.host}:${this.#cfg.port}): ${what} failed: ${(e as Error).message}`, { cause: e });
    }
  }

  async put(name: string, file: string, sha256: string): Promise<void> {
    checkName(name);
    const target = this.#remote(name);
    const dir = path.posix.dirname(target);
    const tmp = path.posix.join(dir, `.${path.posix.basename(name)}.tmp-${randomBytes(6).toString('hex')}`);
    await this.#op(`writing ${name}`, async (c) => {
      await c.mkdir(dir, true);
      try {
        await c.fastPut(file, tmp);
        await c.rename(tmp, target);
      } catch (e) {
        await c.delete(tmp, true).catch(() => undefined);
        throw e;
      }
    });
    const back = await this.#op(`reading back ${name}`, async (c) => {
      const h = createHash('sha256');
      const s = c.createReadStream(target);
      for await (const chunk of s as AsyncIterable<Buffer>) h.update(chunk);
      return h.digest('hex');
    });
    if (back !== sha256) {
      await this.delete(name).catch(() => undefined);
      throw new BackupError('VERIFY_FAILED', `destination ${this.name}: ${name} reads back with another SHA-256; removed`);
    }
  }

  async list(clubId?: string): Promise<ArchiveEntry[]> {
    return this.#op('listing', async (c) => {
      const out: ArchiveEntry[] = [];
      const root = this.#cfg.path;
      if (!(await c.exists(root))) return out;
      const clubs = clubId ? [clubId] : (await c.list(root)).filter((e) => e.type === 'd').map((e) => e.name);
      for (const club of clubs) {
        const dir = path.posix.join(root, club);
        if (!(await c.exists(dir))) continue;
        for (const f of await c.list(dir)) {
          const name = `${club}/${f.name}`;
          const p = parseArchiveName(name);
          if (p && f.type === '-') out.push({ name, clubId: p.clubId, time: p.time, size: f.size });
        }
      }
      return out.sort((a, b) => a.time.getTime() - b.time.getTime() || (a.name < b.name ? -1 : 1));
    });
  }

  async get(name: string): Promise<Readable> {
    checkName(name);
    return this.#op(`reading ${name}`, async (c) => {
      if (!(await c.exists(this.#remote(name)))) throw new BackupError('NOT_FOUND', `destination ${this.name} has no archive ${name}`);
      return c.createReadStream(this.#remote(name)) as unknown as Readable;
    });
  }

  async delete(name: string): Promise<void> {
    checkName(name);
    await this.#op(`deleting ${name}`, (c) => c.delete(this.#remote(name), true).then(() => undefined));
  }

  async close(): Promise<void> {
    const c = await this.#client?.catch(() => undefined);
    this.#client = undefined;
    await c?.end().catch(() => undefined);
  }
}

export function openDestination(cfg: z.output<typeof DestinationSchema>, dataDir: string): BackupDestination {
  if (cfg.kind === 'local') return new LocalDestination(cfg.name, path.isAbsolute(cfg.path) ? cfg.path : path.resolve(dataDir, cfg.path));
  return new SftpDestination(cfg);
}
