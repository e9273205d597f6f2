import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { atomicWriteFileSync } from '../crypto/atomic-file.js';
import { normalizeFingerprint } from '../crypto/identity.js';

/**
 * Trust on first use, as ssh's known_hosts: one line per pinned key, "HOST:PORT FINGERPRINT".
 * The first connection records the key; a later key not pinned is refused. A server may have
 * several lines during an identity key rollover (docs/PROTOCOL.md 6.4): the SDK then accepts
 * any of them, and rewrites the server's lines when a verified `identity.keys` notice says so.
 */
export function defaultKnownServersFile(): string {
  return join(homedir(), '.commusic', 'known_servers');
}

function readLines(file: string): string[] {
  try {
    return readFileSync(file, 'utf8').split('\n');
  } catch {
    return [];
  }
}

/** Every fingerprint pinned for `server` (canonical lower-case hex, in file order, no repeats). */
export function lookupKnownServerPins(file: string, server: string): string[] {
  const out: string[] = [];
  for (const line of readLines(file)) {
    const [name, fp] = line.trim().split(/\s+/);
    const n = name === server && fp ? normalizeFingerprint(fp) : undefined;
    if (n && !out.includes(n)) out.push(n);
  }
  return out;
}

/** The first fingerprint pinned for `server`, or undefined. */
export function lookupKnownServer(file: string, server: string): string | undefined {
  return lookupKnownServerPins(file, server)[0];
}

/** Appends a pin for `server` (trust on first use); creates the file (0600) and its folder (0700). */
export function rememberServer(file: string, server: string, fingerprint: string): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  appendFileSync(file, `${server} ${fingerprint}\n`, { mode: 0o600 });
}

/**
 * Replaces the lines of `server` by one line per fingerprint (other servers' lines and comments
 * stay as they are); atomic (temporary file, fsync, rename), mode 0600.
 */
export function setServerPins(file: string, server: string, fingerprints: readonly string[]): void {
  const keep = readLines(file).filter((line) => {
    const [name, fp] = line.trim().split(/\s+/);
    return !(name === server && fp);
  });
  while (keep.length > 0 && keep[keep.length - 1] === '') keep.pop();
  const lines = [...keep, ...fingerprints.map((fp) => `${server} ${fp}`)];
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  atomicWriteFileSync(file, Buffer.from(lines.length > 0 ? `${lines.join('\n')}\n` : ''), 0o600);
}
