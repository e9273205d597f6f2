import { readFileSync, statSync } from 'node:fs';
import type { Command } from 'commander';
import { CommanderError } from 'commander';
import { EXIT_USAGE, fail, nextStdinRest, usage } from './cli-util.js';
import type { Globals, SessionHolder } from './client-session.js';

/** Most lines in one batch script. */
const MAX_BATCH_LINES = 10_000;

/**
 * Splits one script line into words: blanks separate, '...' and "..." group, a backslash
 * escapes the next character. Returns null for a blank line or a # comment.
 */
export function splitWords(line: string): string[] | null {
  const words: string[] = [];
  let cur = '';
  let inWord = false;
  let quote: '"' | "'" | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (quote) {
      if (c === quote) quote = null;
      else if (c === '\\' && quote === '"' && i + 1 < line.length) cur += line[++i];
      else cur += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      inWord = true;
    } else if (c === '\\' && i + 1 < line.length) {
      cur += line[++i];
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
    } else if (c === '#' && !inWord) {
      break;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (quote) throw new Error('unterminated quote');
  if (inWord) words.push(cur);
  return words.length ? words : null;
}

/**
 * `commusic [login options] batch [FILE|-]`: runs `commusic` subcommands, one per line, over one
 * connection and one login (a run of administration commands is one session in the club's log,
 * not one login per command). Stops at the first failing line, naming it.
 */
export function registerBatchCommand(
  program: Command,
  holder: SessionHolder,
  globals: () => Globals,
  build: (h: SessionHolder) => Command,
  done: () => Promise<void>,
): void {
  program
    .command('batch [file]')
    .description('run commusic subcommands, one per line (# comments), over one login; "-" or no file reads standard input after any secret lines')
    .option('--json', 'errors as JSON on stderr (each line chooses its own output with --json)')
    .action(async (file: string | undefined) => {
      let text: string;
      if (file === undefined || file === '-') text = nextStdinRest();
      else {
        try {
          if (statSync(file).size > 1024 * 1024) usage(`${file} is larger than 1 MiB`);
          text = readFileSync(file, 'utf8');
        } catch (e) {
          fail(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
        }
      }
      const lines = text.split(/\r?\n/);
      if (lines.length > MAX_BATCH_LINES) usage(`a batch has at most ${MAX_BATCH_LINES} lines`);
      const parsed: { n: number; words: string[] }[] = [];
      lines.forEach((l, i) => {
        let words: string[] | null;
        try {
          words = splitWords(l);
        } catch (e) {
          usage(`line ${i + 1}: ${(e as Error).message}`);
        }
        if (words) {
          if (words[0] === 'batch') usage(`line ${i + 1}: batch does not nest`);
          parsed.push({ n: i + 1, words });
        }
      });
      const shared: SessionHolder = { ...holder, shared: true, globals: globals() };
      try {
        for (const { n, words } of parsed) {
          try {
            await build(shared).parseAsync(words, { from: 'user' });
          } catch (e) {
            if (e instanceof CommanderError) {
              if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') continue;
              fail(`line ${n}: ${e.message.replace(/^error:\s*/, '')}`, EXIT_USAGE, 'USAGE');
            }
            const err = e as { code?: string; message?: string };
            fail(`line ${n}: ${err.message ?? String(e)}${err.code ? ` [${err.code}]` : ''}`, 1, err.code ?? 'FAILED');
          }
        }
      } finally {
        holder.conn = shared.conn;
        holder.loggedIn = shared.loggedIn ?? false;
        await done();
      }
    });
}
