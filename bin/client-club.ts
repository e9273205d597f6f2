/**
 * The `commusic` commands on the club's own data: the change log, the club's backups and the
 * export. Registered by commusic-program.ts, which owns the session.
 */
import type { Command } from 'commander';
import { createWriteStream, writeFileSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { parseDuration } from '../daemon/bans/ban-policy.js';
import { safeJson } from '../daemon/common/neutralise.js';
import { collect, fail, getSecret, keyValues, printResult, table, usage } from './cli-util.js';
import type { ClientSession } from './client-session.js';

/** Registers `log`, `backup set-passphrase|status|download` and `export` on the program. */
export function registerClubDataCommands(program: Command, s: ClientSession): void {
  const { call, callAll, callPages, session, act } = s;
  program
  .command('log')
  .description("the club's change log (who changed what, when), newest first")
  .option('--since <when>', 'from: an ISO date/time, "today", "yesterday" or a duration back (1d, 2h)')
  .option('--until <when>', 'until: same forms as --since')
  .option('--by <username>', 'only changes by this user')
  .option('--action <action>', 'only this action (create, update, delete, login, ...)')
  .option('--entity <entity>', 'only this entity (persons, users, ...)')
  .option('--limit <n>', 'at most this many entries (1..1000)', '100')
  .option('--json', 'print JSON')
  .action(
    act(async (o: { since?: string; until?: string; by?: string; action?: string; entity?: string; limit: string; json?: boolean }) => {
      const limit = Number(o.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) usage('--limit is a whole number from 1 to 1000');
      const q = { ...(o.since ? { from: parseWhen(o.since, '--since') } : {}), ...(o.until ? { to: parseWhen(o.until, '--until') } : {}), ...(o.by ? { user: o.by } : {}), ...(o.action ? { action: o.action } : {}), ...(o.entity ? { entity: o.entity } : {}), limit, descending: true };
      // A page is cut by bytes (PROTOCOL.md 7.5): follow nextAfterSeq until `limit` entries.
      const r = { entries: await callAll<{ seq: number; time: string; user: string; ip: string; action: string; entity: string | null; recordId: number | null; changes: unknown }>('log.query', q, 'entries', limit) };
      printResult(r, o.json, (s) =>
        s.entries.length === 0 ? 'no entries' : table(['SEQ', 'TIME', 'USER', 'ACTION', 'ENTITY', 'RECORD', 'CHANGES'], s.entries.map((e) => [e.seq, e.time, e.user, e.action, e.entity, e.recordId, summarise(e.changes)])),
      );
    }),
  );

const backup = program.command('backup').description("the club's own backups: passphrase, status, download");
backup
  .command('set-passphrase')
  .description('set or replace the backup passphrase (at least 12 characters; asked twice without echo)')
  .option('--passphrase-stdin', 'read the new passphrase from standard input (the line after the login password)')
  .option('--passphrase-file <file>', 'read the new passphrase from this file')
  .option('--current-passphrase-stdin', 'replacing: read the current passphrase from standard input (the next line)')
  .option('--current-passphrase-file <file>', 'replacing: read the current passphrase from this file')
  .option('--replace', 'a passphrase is already set: ask for the current one (implied by the --current-* forms)')
  .option('--email <address>', 'mail the nightly archive to this address; repeatable', collect, [])
  .option('--json', 'print JSON')
  .action(
    act(async (o: { passphraseStdin?: boolean; passphraseFile?: string; currentPassphraseStdin?: boolean; currentPassphraseFile?: string; replace?: boolean; email: string[]; json?: boolean }) => {
      const { conn } = await session();
      const replacing = o.replace || o.currentPassphraseStdin || o.currentPassphraseFile !== undefined;
      const current = replacing ? await getSecret('current backup passphrase', 'current-passphrase', { stdin: o.currentPassphraseStdin, file: o.currentPassphraseFile }) : undefined;
      const passphrase = (await getSecret('new backup passphrase', 'passphrase', { stdin: o.passphraseStdin, file: o.passphraseFile }, { confirm: true }))!;
      const r = (await conn.request('backup.setPassphrase', { passphrase, ...(current ? { currentPassphrase: current } : {}), ...(o.email.length ? { emails: o.email } : {}) })).payload as { setAt: string };
      printResult(r, o.json, (s) => `backup passphrase set at ${s.setAt}; keep it safe: without it the club's archives cannot be opened`);
    }),
  );
backup
  .command('status')
  .option('--json', 'print JSON')
  .action(
    act(async (o: { json?: boolean }) => {
      const r = (await call('backup.status', {})) as Record<string, unknown>;
      printResult(r, o.json, (s) => keyValues(s));
    }),
  );
backup
  .command('download')
  .description("download the club's latest encrypted archive (open it with the backup passphrase)")
  .requiredOption('--out <file>', 'write the archive to this new file (mode 0600)')
  .option('--json', 'print JSON')
  .action(
    act(async (o: { out: string; json?: boolean }) => {
      const { conn } = await session();
      const r = await conn.request('backup.download', {});
      if (!r.download) fail('the server sent no archive');
      await pipeline(Readable.from(r.download), createWriteStream(o.out, { mode: 0o600, flags: 'wx' }));
      printResult({ file: o.out, ...(r.payload as object) }, o.json, () => `archive written to ${o.out}`);
    }),
  );

program
  .command('export')
  .description("export the club's data you may export, as JSON")
  .option('--out <file>', 'write to this new file (mode 0600) instead of standard output')
  .option('--json', 'print JSON (the export is JSON either way)')
  .action(
    act(async (o: { out?: string; json?: boolean }) => {
      // Pages cut by bytes (PROTOCOL.md 7.5), joined into one `data` map.
      const data: Record<string, unknown[]> = {};
      for await (const page of callPages('exports.club', {})) {
        for (const [entity, rows] of Object.entries((page.data ?? {}) as Record<string, unknown[]>)) (data[entity] ??= []).push(...rows);
      }
      const r = { data };
      if (o.out) {
        writeFileSync(o.out, `${safeJson(r, undefined, 2)}\n`, { mode: 0o600, flag: 'wx' });
        printResult({ file: o.out }, o.json, () => `export written to ${o.out}`);
      } else process.stdout.write(`${safeJson(r)}\n`);
    }),
  );
}

/**
 * "2026-11-30", an ISO time, "today", "yesterday" (local midnight) or a duration back from now
 * ("1d", "2h30m", ban-policy's parseDuration) to an ISO time string for log.query.
 */
export function parseWhen(text: string, flag: string, now = new Date()): string {
  const t = text.trim().toLowerCase();
  if (t === 'today' || t === 'yesterday') {
    const d = new Date(now.getFullYear(), now.getMonth(), now.getDate() - (t === 'yesterday' ? 1 : 0));
    return d.toISOString();
  }
  if (/^\d{4}-\d{2}-\d{2}$/.test(t)) return new Date(`${t}T00:00:00`).toISOString();
  if (/^\d{4}-\d{2}-\d{2}t/.test(t)) {
    const d = new Date(text);
    if (Number.isNaN(d.getTime())) usage(`${flag} "${text}" is not a date`);
    return d.toISOString();
  }
  try {
    return new Date(now.getTime() - parseDuration(t)).toISOString();
  } catch {
    usage(`${flag} "${text}" is not a date, "today", "yesterday" or a duration like 1d`);
  }
}

function summarise(changes: unknown): string {
  if (!changes || typeof changes !== 'object') return '';
  const s = Object.keys(changes as object).join(',');
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}
