import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { normalizeFingerprint } from '../crypto/identity.js';

/**
 * Trust on first use, as ssh's known_hosts: one line per server, "HOST:PORT FINGERPRINT".
 * The first connection records the key; a later different key is refused.
 */
export function defaultKnownServersFile(): string {
  return join(homedir(), '.commusic', 'known_servers');
}

export function lookupKnownServer(file: string, server: string): string | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  for (const line of text.split('\n')) {
    const [name, fp] = line.trim().split(/\s+/);
    if (name === server && fp) return normalizeFingerprint(fp);
  }
  return undefined;
}

export function rememberServer(file: string, server: string, fingerprint: string): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  appendFileSync(file, `${server} ${fingerprint}\n`, { mode: 0o600 });
}
