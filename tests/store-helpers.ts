import { mkdtempSync, readdirSync, readFileSync, rmSync, lstatSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function tmpDir(prefix = 'commusic-store-'): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else out.push(p);
  }
  return out.sort();
}

/** Every (file, needle label) pair where the file's bytes contain the needle. */
export function findPlaintext(dir: string, needles: Record<string, Buffer>): string[] {
  const hits: string[] = [];
  for (const f of walk(dir)) {
    if (lstatSync(f).isSymbolicLink()) continue;
    const bytes = readFileSync(f);
    for (const [label, n] of Object.entries(needles)) if (n.length && bytes.includes(n)) hits.push(`${f}: ${label}`);
  }
  return hits;
}

/** Names, modes, sizes and content hashes of every file: equal digests = nothing changed. */
export function treeDigest(dir: string): string {
  const h = createHash('sha256');
  for (const f of walk(dir)) {
    const st = lstatSync(f);
    h.update(`${f}\0${st.mode}\0${st.size}\0`);
    if (st.isFile()) h.update(readFileSync(f));
  }
  return h.digest('hex');
}

/** Variants of a secret as they could appear on disk. */
export function needleVariants(label: string, s: string | Buffer): Record<string, Buffer> {
  if (Buffer.isBuffer(s)) return { [`${label} (raw)`]: s, [`${label} (hex)`]: Buffer.from(s.toString('hex')), [`${label} (HEX)`]: Buffer.from(s.toString('hex').toUpperCase()), [`${label} (base64)`]: Buffer.from(s.toString('base64')) };
  return { [`${label} (utf8)`]: Buffer.from(s, 'utf8'), [`${label} (utf16)`]: Buffer.from(s, 'utf16le') };
}

export function openFdCount(): number {
  return readdirSync('/proc/self/fd').length;
}
