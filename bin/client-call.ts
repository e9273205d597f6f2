import type { Command } from 'commander';
import { createReadStream, createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import type { Connection } from '../client/connection.js';
import { safeJson } from '../daemon/common/neutralise.js';
import { nextStdinRest, usage } from './cli-util.js';

/** Payload fields that carry a password or passphrase (auth.login, users.*, backup.setPassphrase). */
export const SECRET_FIELDS = ['password', 'oldPassword', 'newPassword', 'passphrase', 'currentPassphrase'] as const;

function hasSecret(v: unknown, depth = 0): boolean {
  if (depth > 8 || v === null || typeof v !== 'object') return false;
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
    if ((SECRET_FIELDS as readonly string[]).includes(k)) return true;
    if (hasSecret(x, depth + 1)) return true;
  }
  return false;
}

/**
 * `commusic [login options] call COMMAND [--payload JSON | --payload -] [--upload FILE] [--out FILE]`
 * Sends any command (docs/PROTOCOL.md section 7) and prints the response payload as JSON.
 * `--payload -` reads the payload from standard input (after the login password's line when
 * --password-stdin is given). A payload with a password or passphrase field is refused on the
 * command line (it would be visible in `ps` and the shell history): give it through stdin.
 * The old spelling `--json PAYLOAD` still works for one release, with a warning on stderr.
 */
export function registerCallCommand(
  program: Command,
  session: () => Promise<{ conn: Connection }>,
  open: () => Promise<Connection>,
  done: () => Promise<void>,
  wantsLogin: () => boolean,
): void {
  program
    .command('call <command>')
    .description('send any command and print the response payload as JSON (logs in when --club/--user are given)')
    .option('--payload <json>', 'the payload as JSON; "-" reads it from standard input', '{}')
    .option('--json [payload]', 'JSON output (the default for call); a value is the deprecated payload spelling')
    .option('--upload <file>', 'stream this file after the request')
    .option('--out <file>', 'write the download stream to this file (default: standard output)')
    .action(async (command: string, o: { payload: string; json?: string | boolean; upload?: string; out?: string }) => {
      let text = o.payload;
      if (typeof o.json === 'string') {
        process.stderr.write('warning: "call COMMAND --json PAYLOAD" is deprecated and will be removed in the next release; use --payload PAYLOAD (or --payload - to read it from stdin)\n');
        if (o.payload !== '{}') usage('give the payload once: --payload');
        text = o.json;
      }
      const fromStdin = text === '-';
      if (fromStdin) text = nextStdinRest();
      let payload: unknown;
      try {
        payload = JSON.parse(text);
      } catch {
        usage('the payload is not valid JSON');
      }
      if (!fromStdin && hasSecret(payload)) usage(`a payload with a password or passphrase (${SECRET_FIELDS.join(', ')}) is not taken from the command line: give it with --payload - on standard input, or use the subcommand (passwd, users add, backup set-passphrase)`);
      try {
        const conn = wantsLogin() ? (await session()).conn : await open();
        const upload = o.upload ? (createReadStream(o.upload, { highWaterMark: 64 * 1024 }) as AsyncIterable<Uint8Array>) : undefined;
        const r = await conn.request(command, payload, upload ? { upload } : {});
        if (r.download) {
          if (o.out) {
            await pipeline(Readable.from(r.download), createWriteStream(o.out, { mode: 0o600 }));
            process.stdout.write(`${safeJson(r.payload)}\n`);
          } else {
            for await (const c of r.download) process.stdout.write(c);
          }
        } else {
          process.stdout.write(`${safeJson(r.payload, (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString('base64') : v))}\n`);
        }
      } finally {
        await done();
      }
    });
}
