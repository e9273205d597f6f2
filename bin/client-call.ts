import type { Command } from 'commander';
import { createReadStream, createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import type { Connection } from '../client/connection.js';
import { ClientError, RemoteError } from '../client/errors.js';
import { safeJson } from '../daemon/neutralise.js';

/**
 * `commusic --server HOST:PORT --fingerprint FP --club ID --user USER --password-stdin call COMMAND [--json PAYLOAD]`
 * Logs in (when --club/--user are given), sends any command and prints the response payload as
 * JSON. Errors print {"error": {"code", "message"}} and exit 1. `--upload FILE` streams a file
 * after the request (documents.upload); `--out FILE` writes a download stream (documents.download).
 */
async function readStdin(): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of process.stdin) parts.push(c as Buffer);
  return Buffer.concat(parts).toString('utf8').replace(/\r?\n$/, '');
}

function printError(e: unknown): void {
  const err = e instanceof RemoteError || e instanceof ClientError ? { code: e.code, message: e.message } : { code: 'CLIENT', message: (e as Error).message ?? String(e) };
  process.stdout.write(`${safeJson({ error: err })}\n`);
  process.exitCode = 1;
}

export function registerCallCommand(program: Command, open: () => Promise<Connection>): void {
  program
    .option('--club <id>', 'club to log in to (env COMMUSIC_CLUB)')
    .option('--user <name>', 'user name (env COMMUSIC_USER)')
    .option('--password-stdin', 'read the password from standard input (one line)');
  program
    .command('call <command>')
    .description('log in and send any command; prints the response as JSON (see docs/PROTOCOL.md section 7)')
    .option('--json <payload>', 'the payload as JSON', '{}')
    .option('--upload <file>', 'stream this file after the request')
    .option('--out <file>', 'write the download stream to this file (default: standard output)')
    .action(async (command: string, o: { json: string; upload?: string; out?: string }) => {
      const g = program.opts<{ club?: string; user?: string; passwordStdin?: boolean }>();
      let payload: unknown;
      try {
        payload = JSON.parse(o.json);
      } catch {
        printError(new Error('--json is not valid JSON'));
        return;
      }
      const club = g.club ?? process.env.COMMUSIC_CLUB;
      const user = g.user ?? process.env.COMMUSIC_USER;
      if ((club || user) && !(club && user && g.passwordStdin)) {
        printError(new Error('logging in needs --club, --user and --password-stdin'));
        return;
      }
      const password = club ? await readStdin() : undefined;
      let conn: Connection;
      try {
        conn = await open();
      } catch (e) {
        printError(e);
        return;
      }
      let loggedIn = false;
      try {
        if (club && user) {
          await conn.request('auth.login', { club, user, password });
          loggedIn = true;
        }
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
      } catch (e) {
        printError(e);
      } finally {
        if (loggedIn) await conn.request('auth.logout', {}).catch(() => undefined);
        await conn.close();
      }
    });
}
