import { readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Command, CommanderError } from 'commander';
import { neutraliseBlock, neutraliseDeep, safeJson } from '../daemon/common/neutralise.js';

/**
 * Shared by the three programs. Conventions (docs/OPERATIONS.md "Command-line conventions"):
 * exit 0 success, 1 failure, 2 usage error; errors are one line on stderr, a JSON object
 * {"error":{"code","message"}} on stderr when `--json` was given; `--json` only ever selects JSON
 * output; secrets never come from argv (prompt without echo, `--*-stdin`, `--*-file`, `--*-fd`).
 */
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/** True when the command line asked for JSON output (decides the shape of errors too). */
export function jsonWanted(argv: readonly string[] = process.argv): boolean {
  return argv.includes('--json');
}

function writeError(code: string, message: string): void {
  const one = neutraliseBlock(message).replace(/\s*\n\s*/g, ' ').trim();
  process.stderr.write(jsonWanted() ? `${safeJson({ error: { code, message: one } })}\n` : `error: ${one}\n`);
}

/** One-line error on stderr and a non-zero exit, never a stack. */
export function fail(message: string, code = EXIT_FAILURE, errorCode = code === EXIT_USAGE ? 'USAGE' : 'FAILED'): never {
  writeError(errorCode, message);
  process.exit(code);
}

/** A usage error (wrong or missing option, malformed argument): exit code 2. */
export function usage(message: string): never {
  fail(message, EXIT_USAGE, 'USAGE');
}

/** The package version, for `--version` on every program. */
export function packageVersion(): string {
  const require = createRequire(import.meta.url);
  for (const p of ['../../package.json', '../package.json']) {
    try {
      return (require(p) as { version: string }).version;
    } catch {
      continue;
    }
  }
  return '0.0.0';
}

/**
 * A root commander program with the shared conventions: `--version`, usage errors through
 * exitOverride (mapped to exit 2 by runMain), "did you mean" suggestions, one-line errors.
 * Subcommands created with `.command()` inherit these settings.
 */
export function newProgram(name: string, description: string): Command {
  return new Command(name)
    .description(description)
    .version(packageVersion(), '-V, --version', 'print the version and exit')
    .exitOverride()
    .showSuggestionAfterError(true)
    .configureOutput({ writeErr: () => undefined });
}

/**
 * For programs with subcommands: `--json` before the command (`commusic --json ping`) means the
 * same as after it. Commander would take a program-level `--json` after the command too (its
 * options are recognised anywhere), swallowing `call COMMAND --json PAYLOAD`; so instead the
 * argument list is rewritten: a `--json` before the first top-level command name moves to the
 * end, where the command's own `--json` reads it (a command without one refuses it: usage error).
 *
 * @param program the root command (its subcommand names and aliases are the top-level commands)
 * @param argv process.argv (node, script, args...)
 * @returns the argv to parse
 */
export function jsonBeforeCommand(program: Command, argv: readonly string[] = process.argv): string[] {
  const names = new Set(program.commands.flatMap((c) => [c.name(), ...c.aliases()]));
  const args = argv.slice(2);
  const at = args.findIndex((a) => a === '--' || names.has(a));
  if (at < 0 || args[at] === '--') return [...argv];
  const before = args.slice(0, at);
  if (!before.includes('--json')) return [...argv];
  return [...argv.slice(0, 2), ...before.filter((a) => a !== '--json'), ...args.slice(at), '--json'];
}

export async function runMain(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') process.exit(0);
      fail(e.message.replace(/^error:\s*/, ''), EXIT_USAGE, 'USAGE');
    }
    const err = e as { code?: string; message?: string };
    fail(err.code ? `${err.message} [${err.code}]` : (err.message ?? String(e)), EXIT_FAILURE, err.code ?? 'FAILED');
  }
}

/** Commander's parser of a repeatable option (`--register A --register B`): the values in order. */
export const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

export function parseHostPort(s: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+)):(\d{1,5})$/.exec(s.trim());
  if (!m || Number(m[3]) > 65535) usage(`"${s}" is not HOST:PORT`);
  return { host: (m[1] ?? m[2])!, port: Number(m[3]) };
}

/** Largest secret read from a descriptor or file (bytes); a password file is never large. */
const MAX_SECRET_BYTES = 64 * 1024;

/** Reads a secret (passphrase, password) from a file descriptor until EOF; one trailing newline is dropped. */
export function readSecretFromFd(fd: number): string {
  let text: string;
  try {
    text = readFileSync(fd, 'utf8');
  } catch {
    fail(`cannot read from file descriptor ${fd}`);
  }
  if (text.length > MAX_SECRET_BYTES) fail(`file descriptor ${fd} gave more than ${MAX_SECRET_BYTES} bytes`);
  const secret = text.replace(/\r?\n$/, '');
  if (secret.length === 0) fail(`file descriptor ${fd} gave an empty secret`);
  return secret;
}

/** Reads a secret from a file (first line, trailing newline dropped); refuses files others can read when they hold more than the secret's line. */
export function readSecretFile(path: string): string {
  let text: string;
  try {
    if (statSync(path).size > MAX_SECRET_BYTES) fail(`${path} is larger than ${MAX_SECRET_BYTES} bytes`);
    text = readFileSync(path, 'utf8');
  } catch (e) {
    fail(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const secret = text.split(/\r?\n/)[0] ?? '';
  if (secret.length === 0) fail(`${path} holds an empty secret`);
  return secret;
}

/** Largest standard input read (secret lines plus a payload or batch script), bytes. */
const MAX_STDIN_BYTES = 16 * 1024 * 1024;

function readStdinBounded(): string {
  const text = readFileSync(0, 'utf8');
  if (text.length > MAX_STDIN_BYTES) fail(`standard input is larger than ${MAX_STDIN_BYTES} bytes`);
  return text;
}

let stdinLines: string[] | undefined;
/**
 * Standard input read once and handed out line by line: the first secret read from stdin gets
 * the first line, the next one the second line (e.g. login password, then a new password).
 */
export function nextStdinLine(what: string): string {
  stdinLines ??= (() => {
    try {
      return readStdinBounded().split(/\r?\n/);
    } catch {
      fail('cannot read standard input');
    }
  })();
  const line = stdinLines.shift();
  if (line === undefined || line.length === 0) fail(`standard input gave no ${what} (one secret per line)`);
  return line;
}

/** Where one secret comes from; exactly one of the forms, or a prompt when stdin is a terminal. */
export interface SecretFlags {
  stdin?: boolean | undefined;
  file?: string | undefined;
}

/**
 * Resolves a secret from `--X-stdin` / `--X-file` or, with neither, a no-echo prompt on the
 * terminal (twice when `confirm`). Without a terminal and without a form it is a usage error
 * naming the flags, so a script never hangs.
 */
export async function getSecret(what: string, flagBase: string, f: SecretFlags, o: { confirm?: boolean; optional?: boolean } = {}): Promise<string | undefined> {
  if (f.stdin && f.file) usage(`give either --${flagBase}-stdin or --${flagBase}-file, not both`);
  if (f.stdin) return nextStdinLine(what);
  if (f.file) return readSecretFile(f.file);
  if (o.optional) return undefined;
  if (!process.stdin.isTTY) usage(`no ${what}: give --${flagBase}-stdin or --${flagBase}-file (or run on a terminal to be asked)`);
  const first = await promptSecret(`${what}: `);
  if (o.confirm) {
    const again = await promptSecret(`${what} (again): `);
    if (again !== first) fail(`the two ${what} entries differ`);
  }
  if (first.length === 0) fail(`empty ${what}`);
  return first;
}

/**
 * Asks for a secret on the terminal without echoing it. The prompt goes to `output` (stderr by
 * default); the typed characters never do. Streams are injectable for tests.
 */
export async function promptSecret(question: string, input: NodeJS.ReadableStream = process.stdin, out: NodeJS.WritableStream = process.stderr): Promise<string> {
  const { createInterface } = await import('node:readline');
  const { Writable } = await import('node:stream');
  let muted = false;
  const output = new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (!muted) out.write(chunk);
      cb();
    },
  });
  const rl = createInterface({ input, output, terminal: true });
  return new Promise((resolve) => {
    rl.question(question, (answer) => {
      rl.close();
      out.write('\n');
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

/** A text table with a header row; cells are neutralised by the caller (printResult's safe copy). */
export function table(header: readonly string[], rows: readonly (readonly unknown[])[]): string {
  const cells = [header.map(String), ...rows.map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c))))];
  const widths = header.map((_h, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}

/** The rest of standard input after the secret lines already taken, as one text (a payload, a batch script). */
export function nextStdinRest(): string {
  if (stdinLines === undefined) {
    try {
      stdinLines = readStdinBounded().split(/\r?\n/);
    } catch {
      fail('cannot read standard input');
    }
  }
  const rest = stdinLines.join('\n');
  stdinLines = [];
  return rest;
}

/** "key: value" lines for a record (nested objects as one-line JSON); for `show`-style text output. */
export function keyValues(r: Record<string, unknown>): string {
  const width = Math.max(0, ...Object.keys(r).map((k) => k.length));
  return Object.entries(r)
    .map(([k, v]) => `${`${k}:`.padEnd(width + 1)} ${v === null || v === undefined ? '-' : typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
    .join('\n');
}
