import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Command, Option } from 'commander';
import { program as ctlProgram } from '../bin/ctl-program.js';
import { program as daemonProgram } from '../bin/daemon-program.js';
import { buildProgram } from '../bin/commusic-program.js';

/**
 * Every command line the documents show (`commusic ...`, `commusicctl ...`, `commusicd ...`, in
 * code blocks and inline code of README.md and docs/*.md) names commands and options the
 * programs have, so an example pasted from a document never ends in "unknown command". The
 * README's first-club block is also run for real by tests/readme.test.ts.
 *
 * The documents' notation, read as such: `[--json]` is an optional option, `a|b` alternatives
 * (the first is checked), `...`/`…` an elision that ends the check, UPPER-CASE words and `$VAR`
 * are values.
 */
const ROOT = new URL('../../', import.meta.url).pathname;
/** Generated from the code (API.md, CONFIG.md, man pages) or written by the benchmarks, not by hand. */
const NOT_CHECKED = new Set(['API.md', 'CONFIG.md', 'BENCHMARKS.md']);

const PROGRAMS: Record<string, () => Command> = {
  commusic: () => buildProgram(),
  commusicctl: () => ctlProgram,
  commusicd: () => daemonProgram,
};

export interface Finding {
  file: string;
  line: string;
  problem: string;
}

/** The command lines of one markdown text: shell blocks line by line, and inline code spans. */
export function commandLines(md: string): string[] {
  const out: string[] = [];
  const blocks = /```[a-z]*\n([\s\S]*?)```/g;
  for (const m of md.matchAll(blocks)) out.push(...m[1]!.replace(/\\\n\s*/g, ' ').split('\n'));
  const prose = md.replace(blocks, '');
  for (const m of prose.matchAll(/`([^`\n]+)`/g)) out.push(m[1]!);
  // A program name after `--name` or `-u` is a container or account name; one followed by another
  // program name (`podman exec commusicd commusicctl ...`) is the container: the later one runs.
  const found = (l: string) =>
    [...l.matchAll(/(?<!--name |-u )(?:^|(?<=[\s(=;&|]))(?:npx )?(commusicctl|commusicd|commusic)((?: +[^|;&<>()#`]*)?)/g)].map((m) => `${m[1]}${m[2] ?? ''}`.trim());
  const skipContainer = (c: string): string => (/^commusic\w* +(?=commusic)/.test(c) ? skipContainer(c.replace(/^commusic\w* +/, '')) : c);
  return out.flatMap((l) => found(l).map(skipContainer));
}

/** Shell-like words of a command's argument text (quotes group; a quoted word is a value). */
function words(text: string): { word: string; quoted: boolean }[] {
  return [...text.matchAll(/"[^"]*"|'[^']*'|\S+/g)].map((m) => ({ word: m[0].replace(/^["']|["']$/g, ''), quoted: /^["']/.test(m[0]) }));
}

function findOption(cmd: Command, flag: string): Option | undefined {
  for (let c: Command | null = cmd; c; c = c.parent) {
    const o = c.options.find((x) => x.long === flag || x.short === flag || (x.negate && x.long === flag));
    if (o) return o;
  }
  return undefined;
}

/** Problems of one command line against the program trees; none when it parses. */
export function checkLine(line: string): string[] {
  const [name, ...rest] = line.split(/\s+/);
  let cmd = PROGRAMS[name!]!();
  const problems: string[] = [];
  const ws = words(rest.join(' '));
  for (let i = 0; i < ws.length; i++) {
    let { word } = ws[i]!;
    const quoted = ws[i]!.quoted;
    if (!quoted && /^(\.\.\.|…)/.test(word)) break;
    if (!quoted && word.includes('…')) continue;
    if (!quoted) word = word.replace(/^\[+|\]+$/g, '').split('|')[0]!;
    if (!quoted && word.startsWith('-')) {
      const flag = word.split('=')[0]!;
      if (flag === '--help' || flag === '-h') break;
      const o = findOption(cmd, flag);
      if (!o) {
        problems.push(`${cmd.name()} has no option ${flag}`);
        continue;
      }
      if ((o.required || o.optional) && !word.includes('=') && !ws[i]!.word.endsWith(']')) {
        const next = ws[i + 1];
        if (o.required || (next && !next.word.startsWith('-'))) i++;
      }
      continue;
    }
    const subs = cmd.commands as Command[];
    if (subs.length === 0 || quoted) continue;
    const sub = subs.find((c) => c.name() === word || c.aliases().includes(word));
    if (sub) cmd = sub;
    else if (/^[a-z][a-z-]*$/.test(word)) problems.push(`${cmd.name()} has no command ${word} (has: ${subs.map((c) => c.name()).join(', ')})`);
  }
  return problems;
}

function documents(): string[] {
  const docs = readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md') && !NOT_CHECKED.has(f)).map((f) => join('docs', f));
  return ['README.md', ...docs];
}

test('the checker reads the documents\' notation and catches a wrong name', () => {
  assert.deepEqual(commandLines('run `npx commusic --server A:1 users add bert --role member` and\n```sh\ncommusicctl --data ./d club list --json | jq .\n```'), [
    'commusicctl --data ./d club list --json',
    'commusic --server A:1 users add bert --role member',
  ]);
  assert.deepEqual(checkLine('commusic --server A:1 users add bert --role member'), []);
  assert.deepEqual(checkLine('commusicctl --data DIR cluster status [--json]'), []);
  assert.match(checkLine('commusic users create bert')[0] ?? '', /users has no command create/);
  assert.match(checkLine('commusicctl club list --no-such')[0] ?? '', /no option --no-such/);
});

test('every commusic, commusicctl and commusicd line in README.md and docs/*.md names existing commands and options', () => {
  const findings: Finding[] = [];
  let checked = 0;
  for (const file of documents()) {
    for (const line of commandLines(readFileSync(join(ROOT, file), 'utf8'))) {
      checked++;
      for (const problem of checkLine(line)) findings.push({ file, line, problem });
    }
  }
  assert.ok(checked > 50, `the documents show command lines (${checked} found)`);
  assert.deepEqual(findings, []);
});

test('README.md "The three programs": every command path of the examples column exists', () => {
  const md = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const table = md.slice(md.indexOf('## The three programs'));
  const rows = table.split('\n').filter((l) => /^\| `commusic(ctl|d)?` \|/.test(l));
  assert.equal(rows.length, 3, 'one row per program');
  const findings: string[] = [];
  let paths = 0;
  for (const row of rows) {
    const [, prog, , examples] = row.split(/(?<!\\)\|/).map((c) => c.trim());
    const name = prog!.replaceAll('`', '');
    for (const span of examples!.matchAll(/`([^`]+)`/g)) {
      const text = span[1]!.replace(/^commusic(ctl|d)? /, '');
      // "keys init/show/rotate-master": one path per alternative.
      const ws = text.split(' ');
      const at = ws.findIndex((w) => /^[a-z-]+(\/[a-z-]+)+$/.test(w));
      const variants = at < 0 ? [text] : ws[at]!.split('/').map((alt) => [...ws.slice(0, at), alt, ...ws.slice(at + 1)].join(' '));
      for (const v of variants) {
        paths++;
        for (const p of checkLine(`${name} ${v}`)) findings.push(`${name} ${v}: ${p}`);
      }
    }
  }
  assert.ok(paths > 40, `paths checked: ${paths}`);
  assert.deepEqual(findings, []);
});
