import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';

/**
 * Every source folder tells a newcomer what it is for: a README.md that names each of its files
 * (as `name.ts` or `` `name` ``) and, on a line starting "Imports:", every folder its files
 * import. The folders are those tsconfig.json compiles, less tests/ and bench/, plus deploy/.
 * A file added without its line, or an import of a folder the README does not list, fails here
 * with the folder and the name to add.
 */
const ROOT = new URL('../../', import.meta.url).pathname;
const tsconfig = JSON.parse(readFileSync(join(ROOT, 'tsconfig.json'), 'utf8')) as { include: string[] };
const ROOTS = [...new Set(tsconfig.include.map((p) => p.split('/')[0]!))].filter((r) => r !== 'tests' && r !== 'bench').concat('deploy');
const SKIP = new Set(['node_modules', 'build', 'dist']);

/** Folders under the roots that hold at least one file besides README.md, with those files. */
function folders(): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const walk = (dir: string) => {
    const entries = readdirSync(join(ROOT, dir));
    const files = entries.filter((e) => e !== 'README.md' && statSync(join(ROOT, dir, e)).isFile());
    if (files.length > 0) out.set(dir, files);
    for (const e of entries) if (!SKIP.has(e) && statSync(join(ROOT, dir, e)).isDirectory()) walk(join(dir, e));
  };
  for (const r of ROOTS) if (existsSync(join(ROOT, r))) walk(r);
  return out;
}

const readme = (dir: string) => readFileSync(join(ROOT, dir, 'README.md'), 'utf8');

test('folder READMEs: every source folder has one', () => {
  const found = folders();
  assert.ok(found.has('protocol') && found.has('daemon/edge') && found.has('deploy'), `the walk found the folders: ${[...found.keys()].join(', ')}`);
  const missing = [...found.keys()].filter((d) => !existsSync(join(ROOT, d, 'README.md')));
  assert.deepEqual(missing, [], 'folders without a README.md');
});

test('folder READMEs: each names every file of its folder', () => {
  const unnamed: string[] = [];
  for (const [dir, files] of folders()) {
    if (!existsSync(join(ROOT, dir, 'README.md'))) continue;
    const text = readme(dir);
    for (const f of files) {
      const stem = f.replace(/\.[^.]+$/, '');
      if (!text.includes(f) && !text.includes(`\`${stem}\``)) unnamed.push(`${dir}/${f}`);
    }
  }
  assert.deepEqual(unnamed, [], 'files their folder README does not name');
});

/** The folders (with a trailing slash) that `dir`'s .ts files import by a relative path. */
function importedFolders(dir: string, files: string[]): Set<string> {
  const out = new Set<string>();
  for (const f of files.filter((x) => x.endsWith('.ts'))) {
    const src = readFileSync(join(ROOT, dir, f), 'utf8');
    for (const m of src.matchAll(/(?:from|import)\s*\(?\s*['"](\.[^'"]+)['"]/g)) {
      const target = dirname(normalize(join(dir, m[1]!)));
      if (target !== normalize(dir)) out.add(`${relative('.', target)}/`);
    }
  }
  return out;
}

test('folder READMEs: the "Imports:" line lists every folder the code imports', () => {
  const problems: string[] = [];
  for (const [dir, files] of folders()) {
    if (!files.some((f) => f.endsWith('.ts')) || !existsSync(join(ROOT, dir, 'README.md'))) continue;
    const line = /^Imports: ([\s\S]*?)(?:\n\n|\n- |(?![\s\S]))/m.exec(readme(dir));
    if (!line) {
      problems.push(`${dir}/README.md has no "Imports:" line`);
      continue;
    }
    const declared = [...line[1]!.matchAll(/`([a-z/]+\/)`/g)].map((m) => m[1]!);
    for (const used of importedFolders(dir, files)) {
      if (!declared.some((d) => used.startsWith(d))) problems.push(`${dir}/README.md: add \`${used}\` to "Imports:"`);
    }
  }
  assert.deepEqual(problems, []);
});
