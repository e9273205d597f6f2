/**
 * Watches the master key file and its folder while the daemon runs. Any change of content,
 * mode, owner, or the file being replaced or removed raises a security event (the daemon logs
 * it and the mailer sends it). Two sources, because either alone misses cases: fs.watch on the
 * folder (immediate, but silent for chmod/chown on some file systems) and a stat poll
 * (default every second) comparing type, mode, owner, inode, size, times and a SHA-256 of the
 * content with a baseline. Each change is reported once, then becomes the new baseline.
 *
 * Reads of the key file (atime) are not reported: atime is unreliable under relatime/noatime,
 * and the only reader should be the daemon itself; use auditd/fanotify to watch reads.
 */
import { watch, lstatSync, readFileSync, type FSWatcher, type Stats } from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname } from 'node:path';

export type KeyFileEventKind = 'key-file-changed' | 'key-file-mode' | 'key-file-replaced' | 'key-file-removed';

export interface SecurityEvent {
  kind: KeyFileEventKind;
  path: string;
  detail: string;
  time: Date;
}

export interface KeyWatcher {
  close(): void;
  /** Accept the current state as the new baseline (after the daemon's own key rotation). */
  rebaseline(): void;
  /** Run `fn` (the daemon's own rotation) without raising events, then rebaseline. */
  expectChange<T>(fn: () => Promise<T>): Promise<T>;
}

export interface KeyWatchOptions {
  pollMs?: number;
  /** Raised when the watcher itself fails (e.g. the folder vanished); default: ignore. */
  onError?: (err: Error) => void;
}

interface Snapshot {
  exists: boolean;
  isFile: boolean;
  isSymlink: boolean;
  mode: number;
  uid: number;
  gid: number;
  ino: number;
  dev: number;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  hash: string;
}

function snap(path: string): Snapshot {
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch {
    return { exists: false, isFile: false, isSymlink: false, mode: 0, uid: -1, gid: -1, ino: 0, dev: 0, size: 0, mtimeMs: 0, ctimeMs: 0, hash: '' };
  }
  let hash = '';
  if (st.isFile() && st.size <= 65536) {
    try {
      hash = createHash('sha256').update(readFileSync(path)).digest('hex');
    } catch {
      hash = 'unreadable';
    }
  }
  return { exists: true, isFile: st.isFile(), isSymlink: st.isSymbolicLink(), mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, ino: st.ino, dev: st.dev, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, hash };
}

const oct = (m: number) => '0' + m.toString(8).padStart(3, '0');

function compare(path: string, a: Snapshot, b: Snapshot, isDir: boolean): Array<{ kind: KeyFileEventKind; detail: string }> {
  const out: Array<{ kind: KeyFileEventKind; detail: string }> = [];
  const what = isDir ? 'key folder' : 'key file';
  if (a.exists && !b.exists) return [{ kind: 'key-file-removed', detail: `${what} ${path} was removed or renamed` }];
  if (!a.exists && b.exists) return [{ kind: 'key-file-replaced', detail: `${what} ${path} appeared again (re-created)` }];
  if (!a.exists) return out;
  if (a.ino !== b.ino || a.dev !== b.dev || a.isSymlink !== b.isSymlink || a.isFile !== b.isFile) {
    out.push({ kind: 'key-file-replaced', detail: `${what} ${path} was replaced (inode ${a.ino} -> ${b.ino}${b.isSymlink ? ', now a symbolic link' : ''})` });
  } else if (!isDir && (a.hash !== b.hash || a.size !== b.size)) {
    out.push({ kind: 'key-file-changed', detail: `content of ${what} ${path} changed (size ${a.size} -> ${b.size})` });
  } else if (!isDir && a.mtimeMs !== b.mtimeMs) {
    out.push({ kind: 'key-file-changed', detail: `${what} ${path} was written (modification time changed, content identical)` });
  }
  if (a.mode !== b.mode) out.push({ kind: 'key-file-mode', detail: `mode of ${what} ${path} changed ${oct(a.mode)} -> ${oct(b.mode)}` });
  if (a.uid !== b.uid || a.gid !== b.gid) out.push({ kind: 'key-file-mode', detail: `owner of ${what} ${path} changed ${a.uid}:${a.gid} -> ${b.uid}:${b.gid}` });
  return out;
}

/** Start watching `keyFile` and its folder. Events arrive within about `pollMs`. */
export function watchKeyFile(keyFile: string, onSecurityEvent: (e: SecurityEvent) => void, opts: KeyWatchOptions = {}): KeyWatcher {
  const dir = dirname(keyFile);
  let fileBase = snap(keyFile);
  let dirBase = snap(dir);
  let paused = false;
  let closed = false;

  const check = () => {
    if (closed || paused) return;
    const f = snap(keyFile);
    const d = snap(dir);
    const events = [...compare(keyFile, fileBase, f, false), ...compare(dir, dirBase, d, true)];
    fileBase = f;
    dirBase = d;
    const time = new Date();
    for (const e of events) {
      try {
        onSecurityEvent({ kind: e.kind, path: e.detail.includes('key folder') ? dir : keyFile, detail: e.detail, time });
      } catch (err) {
        opts.onError?.(err as Error);
      }
    }
  };

  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dir, { persistent: false }, () => {
      // Any entry of the key folder may matter (a new file next to the key, a rename): check now.
      setImmediate(check);
    });
    watcher.on('error', (e) => opts.onError?.(e));
  } catch (e) {
    opts.onError?.(e as Error);
  }
  const timer = setInterval(check, opts.pollMs ?? 1000);
  timer.unref();

  const rebaseline = () => {
    fileBase = snap(keyFile);
    dirBase = snap(dir);
  };
  return {
    close() {
      closed = true;
      clearInterval(timer);
      watcher?.close();
    },
    rebaseline,
    async expectChange<T>(fn: () => Promise<T>): Promise<T> {
      paused = true;
      try {
        return await fn();
      } finally {
        rebaseline();
        paused = false;
      }
    },
  };
}
