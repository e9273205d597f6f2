import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { KEY_FILE_KIND_PASSPHRASE } from '../crypto/master-key.js';

/**
 * True when <data>/keys/master.key exists and is the passphrase-protected kind (byte 5 of the
 * key file, crypto/master-key.ts). A missing or unreadable file is false: opening the store
 * reports that with its own error.
 */
export function masterKeyNeedsPassphrase(dataDir: string): boolean {
  try {
    const buf = readFileSync(join(dataDir, 'keys', 'master.key'));
    return buf.length > 5 && buf[5] === KEY_FILE_KIND_PASSPHRASE;
  } catch {
    return false;
  }
}
