/**
 * StrictModes for the data folder, as sshd checks a user's ~/.ssh: the daemon refuses to start
 * when the data folder (which also holds control.sock, the stores and keys/) is writable by
 * group or others, or owned by another account; and likewise for each folder above it, except
 * root-owned folders with the sticky bit (such as /tmp), where others cannot rename or remove
 * our entries. Otherwise another local user could replace control.sock and receive what
 * commusicctl sends (a club's backup passphrase), or swap stores and keys.
 */
import { lstatSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

export class UnsafeFolderError extends Error {
  readonly code = 'DATA_DIR_UNSAFE';
  constructor(message: string) {
    super(message);
    this.name = 'UnsafeFolderError';
  }
}

function modeText(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0');
}

/**
 * Throw UnsafeFolderError (with the command that fixes it) unless `dir` and every folder above
 * it are safe for a daemon running as `uid` (default: this process's effective uid).
 */
export function assertSafeDataDir(dir: string, uid: number | undefined = process.geteuid?.()): void {
  const abs = resolve(dir);
  const l = lstatSync(abs);
  if (l.isSymbolicLink()) throw new UnsafeFolderError(`data folder ${abs} is a symbolic link; point the configuration at the real folder`);
  if (!l.isDirectory()) throw new UnsafeFolderError(`data folder ${abs} is not a folder`);
  if (uid !== undefined && l.uid !== uid) throw new UnsafeFolderError(`data folder ${abs} is owned by uid ${l.uid}, not by the daemon's uid ${uid}; run: chown ${uid} ${abs} && chmod 700 ${abs}`);
  if ((l.mode & 0o077) !== 0) throw new UnsafeFolderError(`data folder ${abs} is accessible by group or others (mode ${modeText(l.mode)}); another local user could replace control.sock or the stores. Run: chmod 700 ${abs}`);
  for (let p = dirname(abs); ; p = dirname(p)) {
    const s = statSync(p);
    const sticky = (s.mode & 0o1000) !== 0;
    if ((s.mode & 0o022) !== 0 && !(sticky && s.uid === 0)) throw new UnsafeFolderError(`folder ${p} above the data folder is writable by group or others (mode ${modeText(s.mode)}); another local user could replace the data folder. Run: chmod go-w ${p}`);
    if (s.uid !== 0 && uid !== undefined && s.uid !== uid) throw new UnsafeFolderError(`folder ${p} above the data folder is owned by uid ${s.uid} (neither root nor the daemon's uid ${uid}); that account could replace the data folder`);
    if (p === dirname(p)) break;
  }
}
