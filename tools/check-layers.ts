/**
 * The layer check: runs dependency-cruiser with the rules in .dependency-cruiser.cjs on every
 * source folder that exists, prints its report and exits with its status (`npm run
 * check:layers`, first step of `npm test`). checkLayers() is what tests/layers.test.ts calls, on
 * the repository and on a fixture with deliberately wrong imports.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Source folders the rules know, top layer first; tools/, bench/ and tests/ may import anything. */
export const LAYER_FOLDERS = ['bin', 'daemon', 'cluster', 'client', 'protocol', 'storage', 'crypto', 'tools', 'bench', 'tests'] as const;

/** The repository root, from dist/tools/ or tools/. */
export function repoRoot(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  return join(here, basename(dirname(here)) === 'dist' ? '../..' : '..');
}

export interface LayerReport {
  /** dependency-cruiser's exit status: 0 = no violation, else the number of errors (or 1 on a failure to run). */
  readonly status: number;
  /** Its report: one line per violation, `error RULE-NAME: FROM → TO`. */
  readonly output: string;
}

/**
 * Cruises the LAYER_FOLDERS present under `cwd` (default: the repository) with the
 * repository's rule file; `cwd` must hold a tsconfig.json. Bounded to 120 s.
 */
export function checkLayers(cwd = repoRoot()): LayerReport {
  const root = repoRoot();
  const folders = LAYER_FOLDERS.filter((f) => existsSync(join(cwd, f)));
  const cli = join(root, 'node_modules', 'dependency-cruiser', 'bin', 'dependency-cruise.mjs');
  const r = spawnSync(process.execPath, [cli, '--config', join(root, '.dependency-cruiser.cjs'), '--output-type', 'err', ...folders], { cwd, encoding: 'utf8', timeout: 120_000 });
  return { status: r.status ?? 1, output: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}` };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const r = checkLayers();
  process.stdout.write(r.status === 0 ? `layer check: ${r.output.trim()}\n` : r.output);
  process.exitCode = r.status === 0 ? 0 : 1;
}
