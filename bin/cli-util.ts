import { readFileSync } from 'node:fs';
import { neutraliseBlock, neutraliseDeep, safeJson } from '../daemon/neutralise.js';

/**
 * Shared by the three programs: one-line errors on stderr and a non-zero exit, never a stack.
 */
export function fail(message: string, code = 1): never {
  process.stderr.write(`error: ${neutraliseBlock(message)}\n`);
  process.exit(code);
}

export async function runMain(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (e) {
    const err = e as { code?: string; message?: string };
    fail(err.code ? `${err.message} [${err.code}]` : (err.message ?? String(e)));
  }
}

export function parseHostPort(s: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+)):(\d{1,5})$/.exec(s.trim());
  if (!m || Number(m[3]) > 65535) fail(`"${s}" is not HOST:PORT`);
  return { host: (m[1] ?? m[2])!, port: Number(m[3]) };
}

/** Reads a secret (passphrase, password) from a file descriptor until EOF; one trailing newline is dropped. */
export function readSecretFromFd(fd: number): string {
  let text: string;
  try {
    text = readFileSync(fd, 'utf8');
  } catch {
    fail(`cannot read from file descriptor ${fd}`);
  }
  const secret = text.replace(/\r?\n$/, '');
  if (secret.length === 0) fail(`file descriptor ${fd} gave an empty secret`);
  return secret;
}

/** Asks for a secret on the terminal without echoing it. */
export async function promptSecret(question: string): Promise<string> {
  const { createInterface } = await import('node:readline');
  const { Writable } = await import('node:stream');
  let muted = false;
  const output = new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (!muted) process.stderr.write(chunk);
      cb();
    },
  });
  const rl = createInterface({ input: process.stdin, output, terminal: true });
  return new Promise((resolve) => {
    rl.question(question, (answer) => {
      rl.close();
      process.stderr.write('\n');
      resolve(answer);
    });
    muted = true;
  });
}

/**
 * Prints an operation's result: JSON with --json (control characters and bidi overrides as
 * \uXXXX escapes), else the human text. The text callback gets a copy of the result whose every
 * string went through neutralise() (untrusted names, reasons and details cannot forge lines or
 * reach the terminal raw); it must build the text from that copy.
 */
export function printResult<T>(result: T, json: boolean | undefined, text: (safe: T) => string): void {
  process.stdout.write(json ? `${safeJson(result)}\n` : `${neutraliseBlock(text(neutraliseDeep(result)))}\n`);
}
