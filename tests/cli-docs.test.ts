import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { bashCompletion, commandWords } from '../bin/cli-docs.js';
import { buildProgram } from '../bin/commusic-program.js';
import { program as ctlProgram } from '../bin/ctl-program.js';
import { manPages } from '../tools/gen-man.js';

/**
 * Issue 16: shell completion and man pages are generated from the command trees. The committed
 * docs/man/*.1 match a fresh generation (`npm run docs:man`), name every command, and the bash
 * completion offers each command's subcommands and options.
 */
const trees: [string, Command][] = [
  ['commusic', buildProgram()],
  ['commusicctl', ctlProgram],
];

test('docs/man/*.1 are up to date with the command trees (npm run docs:man) and name every command', () => {
  for (const [file, text] of Object.entries(manPages())) {
    const committed = readFileSync(new URL(`../../docs/man/${file}`, import.meta.url), 'utf8');
    assert.equal(committed, text, `docs/man/${file} is stale: run npm run docs:man`);
  }
  const pages = manPages();
  for (const [name, root] of trees) {
    for (const w of commandWords(root)) if (w.path) assert.ok(pages[`${name}.1`]!.includes(`${name} ${w.path.replace(/-/g, '\\-')}`), `${name} ${w.path} in the man page`);
  }
});

function complete(script: string, fn: string, words: string[]): string[] {
  const cmd = `${script}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; ${fn}; printf '%s\\n' "\${COMPREPLY[@]}"`;
  return execFileSync('bash', ['-c', cmd], { encoding: 'utf8', timeout: 30_000 }).split('\n').filter(Boolean);
}

test('bash completion: valid bash; every command path completes to its subcommands and options', () => {
  for (const [name, root] of trees) {
    const script = bashCompletion(root);
    execFileSync('bash', ['-n', '-c', script], { timeout: 30_000 });
    const fn = `_${name}`;
    const top = complete(script, fn, [name, '']);
    for (const s of commandWords(root).find((w) => w.path === '')!.subcommands) assert.ok(top.includes(s), `${name}: ${s} offered at the top`);
    for (const w of commandWords(root)) {
      if (!w.path) continue;
      const got = complete(script, fn, [name, ...w.path.split(' '), '']);
      for (const x of [...w.subcommands, ...w.options]) assert.ok(got.includes(x), `${name} ${w.path}: ${x} offered`);
    }
  }
  // Options (and their values) before the command are skipped; a prefix narrows.
  const script = bashCompletion(trees[0]![1]);
  assert.deepEqual(complete(script, '_commusic', ['commusic', '--server', 'h:1', 'users', 'res']), ['reset-password']);
});

test('commusic completion bash and commusicctl completion bash print the script; another shell is a usage error', () => {
  const bin = (n: string) => new URL(`../bin/${n}.js`, import.meta.url).pathname;
  for (const [name] of trees) {
    const out = execFileSync(process.execPath, [bin(name), 'completion', 'bash'], { encoding: 'utf8', timeout: 30_000 });
    assert.match(out, new RegExp(`complete -o default -F _${name} ${name}\\n$`));
  }
  assert.throws(() => execFileSync(process.execPath, [bin('commusic'), 'completion', 'fish'], { stdio: 'pipe', timeout: 30_000 }), (e: { status?: number }) => e.status === 2);
});
