import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { atomicWriteFileSync } from '../crypto/atomic-file.js';
import { normalizeFingerprint } from '../crypto/identity.js';
import type { SuccessionRecord } from '../protocol/identity-notice.js';

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

/**
 * The name a server is filed under: "HOST:PORT" with the host in lower case and without a
 * trailing dot ("Example.ORG.:4433" -> "example.org:4433"), as OpenSSH canonicalises known_hosts
 * names. Lines written before this rule are matched through the same function.
 */
export function canonicalServerName(server: string): string {
  const m = /^(.*?)(:\d+)?$/.exec(server.trim())!;
  let host = m[1]!.toLowerCase();
  if (host.startsWith('[') && host.endsWith('.]')) host = `${host.slice(0, -2)}]`;
  while (host.endsWith('.') && host.length > 1) host = host.slice(0, -1);
  return `${host}${m[2] ?? ''}`;
}

/**
 * Remembered rotation statements are kept on lines "@rotation HOST:PORT OLD NEW announced|switched"
 * (docs/PROTOCOL.md 6.4). Older readers split a line into name and fingerprint and never see a
 * server called "@rotation", so the file stays readable by them.
 */
const ROTATION_TAG = '@rotation';

function sameServer(name: string | undefined, server: string): boolean {
  return name !== undefined && name !== ROTATION_TAG && canonicalServerName(name) === canonicalServerName(server);
}

/** The successions remembered for `server` (see SuccessionRecord); malformed lines are skipped. */
export function lookupSuccessions(file: string, server: string): SuccessionRecord[] {
  const out: SuccessionRecord[] = [];
  for (const line of readLines(file)) {
    const [tag, name, oldFp, newFp, state] = line.trim().split(/\s+/);
    if (tag !== ROTATION_TAG || !name || canonicalServerName(name) !== canonicalServerName(server)) continue;
    const o = oldFp ? normalizeFingerprint(oldFp) : undefined;
    const n = newFp ? normalizeFingerprint(newFp) : undefined;
    if (!o || !n || (state !== 'announced' && state !== 'switched')) continue;
    if (!out.some((r) => r.old === o && r.new === n)) out.push({ old: o, new: n, switched: state === 'switched' });
  }
  return out;
}

/** Every fingerprint pinned for `server` (canonical lower-case hex, in file order, no repeats). */
export function lookupKnownServerPins(file: string, server: string): string[] {
  const out: string[] = [];
  for (const line of readLines(file)) {
    const [name, fp] = line.trim().split(/\s+/);
    const n = sameServer(name, server) && fp ? normalizeFingerprint(fp) : undefined;
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
  appendFileSync(file, `${canonicalServerName(server)} ${fingerprint}\n`, { mode: 0o600 });
}

/**
 * Replaces the lines of `server` by one line per fingerprint (other servers' lines and comments
 * stay as they are); with `successions`, its "@rotation" lines too (else they stay). Atomic
 * (temporary file, fsync, rename), mode 0600. The server name is written canonical.
 */
export function setServerPins(file: string, server: string, fingerprints: readonly string[], successions?: readonly SuccessionRecord[]): void {
  const keep = readLines(file).filter((line) => {
    const [name, second] = line.trim().split(/\s+/);
    if (name === ROTATION_TAG) return !(successions && second && canonicalServerName(second) === canonicalServerName(server));
    return !(sameServer(name, server) && second);
  });
  while (keep.length > 0 && keep[keep.length - 1] === '') keep.pop();
  const s = canonicalServerName(server);
  const lines = [...keep, ...fingerprints.map((fp) => `${s} ${fp}`), ...(successions ?? []).map((r) => `${ROTATION_TAG} ${s} ${r.old} ${r.new} ${r.switched ? 'switched' : 'announced'}`)];
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  atomicWriteFileSync(file, Buffer.from(lines.length > 0 ? `${lines.join('\n')}\n` : ''), 0o600);
}
