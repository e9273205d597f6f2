import type { Command } from 'commander';
import { closeSync, fsyncSync, openSync, readFileSync, statSync, writeSync } from 'node:fs';
import { runOperation, runOperations, type OfflineOptions } from '../daemon/ops/offline.js';
import { BULK_BATCH, MAX_BULK_BYTES, formatPasswordFile, parseClubList } from '../daemon/club/club-bulk.js';
import { fail, getSecret, keyValues, readSecretFromFd, printResult, table, usage } from './cli-util.js';

interface ClubRow {
  id: string;
  name: string;
  plan: string;
  status: string;
  created: string;
}


/** `commusicctl club ...` and `keys rotate-*`: on the running daemon or on the data folder. */
export function registerClubCommands(program: Command, dataDir: () => string, offline: () => OfflineOptions): void {
  const run = (op: string, args: unknown) => runOperation(dataDir(), op, args, offline());
  const club = program.command('club').description('clubs: create, list, show, suspend, resume, delete');
  club
    .command('create <name>')
    .description("create a club's encrypted store and its administrator (the person named in the contract)")
    .requiredOption('--admin <user>', "the administrator's user name")
    .option('--plan <plan>', 'basic, premium or federation', 'basic')
    .option('--password-stdin', "read the administrator's password from stdin (else a one-time password is printed once)")
    .option('--password-file <file>', "read the administrator's password from this file")
    .option('--ask-password', "ask for the administrator's password on the terminal")
    .option('--json', 'print JSON')
    .action(async (name: string, o: { admin: string; plan: string; passwordStdin?: boolean; passwordFile?: string; askPassword?: boolean; json?: boolean }) => {
      const password = await getSecret("administrator's password", 'password', { stdin: o.passwordStdin, file: o.passwordFile }, { confirm: true, optional: !o.askPassword });
      const { result } = await run('club.create', { name, admin: o.admin, plan: o.plan, ...(password ? { password } : {}) });
      const r = result as { id: string; oneTimePassword?: string };
      printResult(r, o.json, (r) =>
        [`created club ${r.id} (${name}, plan ${o.plan}) with administrator ${o.admin}`, ...(r.oneTimePassword ? [`one-time password (shown once): ${r.oneTimePassword}`] : [])].join('\n'),
      );
    });
  club
    .command('create-bulk <file>')
    .description('create many clubs from a file (CSV with a header name,admin[,plan], or JSON lines); every administrator gets a one-time password')
    .option('--out <file>', 'write the one-time passwords to this new file (mode 0600; an existing file is not overwritten)')
    .option('--print', 'print the one-time passwords instead')
    .option('--json', 'print JSON (with --print)')
    .action(async (file: string, o: { out?: string; print?: boolean; json?: boolean }) => {
      if (!o.out === !o.print) usage('give --out FILE (one-time passwords written to a new 0600 file) or --print');
      let text: string;
      try {
        if (statSync(file).size > MAX_BULK_BYTES) fail(`${file} is larger than ${MAX_BULK_BYTES} bytes`);
        text = readFileSync(file, 'utf8');
      } catch (e) {
        fail(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
      const { clubs, errors } = parseClubList(text);
      if (errors.length) {
        process.stderr.write(errors.map((e) => `${file}:${e.line}: ${e.message}`).join('\n') + '\n');
        fail(`${errors.length} error${errors.length === 1 ? '' : 's'} in ${file}; nothing was created`);
      }
      let fd: number | undefined;
      if (o.out) {
        try {
          fd = openSync(o.out, 'wx', 0o600);
        } catch (e) {
          fail(`cannot create ${o.out}: ${(e as NodeJS.ErrnoException).code === 'EEXIST' ? 'it exists (choose a new file name)' : ((e as NodeJS.ErrnoException).code ?? (e as Error).message)}`);
        }
      }
      const batches: unknown[] = [];
      for (let i = 0; i < clubs.length; i += BULK_BATCH) batches.push({ clubs: clubs.slice(i, i + BULK_BATCH).map((c) => ({ name: c.name, admin: c.admin, plan: c.plan })) });
      let created = 0;
      const all: unknown[] = [];
      try {
        await runOperations(dataDir(), 'club.create-bulk', batches, offline(), (result) => {
          const rows = result as Array<{ id: string; name: string; adminUser: string; plan: string; oneTimePassword?: string }>;
          // Written (and synced) batch by batch: a later failure leaves the passwords of the clubs already created.
          const textOut = formatPasswordFile(rows);
          if (fd !== undefined) {
            writeSync(fd, created === 0 ? textOut : textOut.slice(textOut.indexOf('\n') + 1));
            fsyncSync(fd);
          } else if (o.json) all.push(...rows);
          else process.stdout.write(created === 0 ? textOut : textOut.slice(textOut.indexOf('\n') + 1));
          created += rows.length;
        });
      } catch (e) {
        if (fd !== undefined) closeSync(fd);
        const err = e as { code?: string; message?: string };
        fail(`${err.message ?? String(e)}${err.code ? ` [${err.code}]` : ''}; ${created} of ${clubs.length} clubs were created before the error${o.out && created ? ` (their passwords are in ${o.out})` : ''}`);
      }
      if (fd !== undefined) closeSync(fd);
      if (o.json) process.stdout.write(`${JSON.stringify(o.print ? all : { created, file: o.out })}\n`);
      else process.stderr.write(`created ${created} clubs${o.out ? `; one-time passwords in ${o.out} (mode 0600)` : ''}\n`);
    });
  club
    .command('list')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const rows = (await run('club.list', {})).result as ClubRow[];
      printResult(rows, o.json, (rows) => (rows.length === 0 ? 'no clubs' : table(['ID', 'STATUS', 'PLAN', 'CREATED', 'NAME'], rows.map((c) => [c.id, c.status, c.plan, c.created, c.name]))));
    });
  for (const [cmd, op, verb] of [
    ['show', 'club.show', 'details of a club'],
    ['suspend', 'club.suspend', 'refuse all logins and commands for the club'],
    ['resume', 'club.resume', 'lift a suspension'],
  ] as const) {
    club
      .command(`${cmd} <id>`)
      .description(verb)
      .option('--json', 'print JSON')
      .action(async (id: string, o: { json?: boolean }) => {
        const { result } = await run(op, { id });
        printResult(result, o.json, (safe) => (cmd === 'show' ? keyValues(safe as Record<string, unknown>) : `club ${id} is now ${(safe as ClubRow).status}`));
      });
  }
  club
    .command('delete <id>')
    .description("crypto-shred a club: destroy its data key first, then its files")
    .requiredOption('--yes', 'confirm: the data cannot be recovered afterwards (backups aside)')
    .option('--json', 'print JSON')
    .action(async (id: string, o: { json?: boolean }) => {
      const { result } = await run('club.delete', { id });
      const r = result as { archives: { removed: number; destinations: string[]; failed: Array<{ destination: string; error: string }> } };
      printResult(r, o.json, (r) =>
        [
          `deleted club ${id}: data key and archive key destroyed, files removed`,
          `archives removed: ${r.archives.removed}${r.archives.destinations.length ? ` (at ${r.archives.destinations.join(', ')})` : ''}`,
          ...r.archives.failed.map((f) => `destination ${f.destination} not reached (${f.error}); its archives of the club open nowhere and retention removes them`),
        ].join('\n'));
    });
}

export function registerKeyRotation(keys: Command, dataDir: () => string, offline: () => OfflineOptions): void {
  keys
    .command('rotate-master')
    .description('new master key; rewraps every club key without touching club data (resumable). With --rekey-clubs (the master key leaked): also new club keys, re-encrypted stores and documents, a new archive key')
    .option('--rekey-clubs', 'the master key leaked: re-encrypt every club under a new data key, new archive key, then new master key')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean; rekeyClubs?: boolean }) => {
      const pass = offline().passphrase;
      const { result } = await runOperation(dataDir(), 'keys.rotate-master', { ...(pass !== undefined ? { passphrase: String(pass) } : {}), ...(o.rekeyClubs ? { rekeyClubs: true } : {}) }, offline());
      if (o.rekeyClubs) {
        const r = result as { clubs: Array<{ id: string; documents: number }>; archiveKey: { newKeyId: string }; master: { oldKeyId: string; newKeyId: string } };
        printResult(r, o.json, (r) =>
          `${r.clubs.length} clubs re-encrypted under new data keys (${r.clubs.reduce((n, c) => n + c.documents, 0)} documents re-encrypted)\nnew archive key ${r.archiveKey.newKeyId} (old one kept for reading old archives)\nmaster key ${r.master.oldKeyId} replaced by ${r.master.newKeyId}`);
        return;
      }
      const r = result as { oldKeyId: string; newKeyId: string; clubs: number };
      printResult(r, o.json, (r) => `master key ${r.oldKeyId} replaced by ${r.newKeyId}; ${r.clubs} club keys rewrapped`);
    });
  keys
    .command('rotate-archive')
    .description('new server archive key for new archives; the old one is kept for reading old archives only')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const { result } = await runOperation(dataDir(), 'keys.rotate-archive', {}, offline());
      const r = result as { oldKeyId: string; newKeyId: string; retired: number };
      printResult(r, o.json, (r) => `archive key ${r.oldKeyId} retired (kept for reading); new archives use ${r.newKeyId}`);
    });
  keys
    .command('archive-keys')
    .description('ids of the current server archive key and of the retired ones (kept for reading old archives)')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const { result } = await runOperation(dataDir(), 'keys.archive-keys', {}, offline());
      const r = result as { current: string; retired: Array<{ id: string; retiredAt: string }> };
      printResult(r, o.json, (r) => [`current: ${r.current}`, ...r.retired.map((x) => `retired: ${x.id} (${x.retiredAt})`)].join('\n'));
    });
  keys
    .command('forget-archive-keys [ids...]')
    .description('destroy retired archive keys (the given ids, or all retired ones): archives written under them open nowhere afterwards')
    .requiredOption('--yes', 'confirm: archives under these keys cannot be opened afterwards')
    .option('--json', 'print JSON')
    .action(async (ids: string[], o: { json?: boolean }) => {
      const { result } = await runOperation(dataDir(), 'keys.forget-archive-keys', ids.length > 0 ? { ids } : {}, offline());
      const r = result as { forgotten: string[]; kept: number };
      printResult(r, o.json, (r) => `${r.forgotten.length} retired archive key(s) destroyed${r.forgotten.length ? `: ${r.forgotten.join(', ')}` : ''}; ${r.kept} retired key(s) kept`);
    });
  keys
    .command('rotate-club <id>')
    .description("re-encrypt a club's store and document keys under a new data key (resumable)")
    .option('--json', 'print JSON')
    .action(async (id: string, o: { json?: boolean }) => {
      const { result } = await runOperation(dataDir(), 'keys.rotate-club', { id }, offline());
      printResult(result, o.json, (result) => `club ${id} now uses data key version ${(result as { keyVersion: number }).keyVersion}`);
    });
}

export function passphraseOption(fd: string | undefined): OfflineOptions {
  if (fd === undefined) return {};
  const n = Number(fd);
  if (!Number.isInteger(n) || n < 0) usage('--passphrase-fd needs a file descriptor number');
  return { passphrase: readSecretFromFd(n) };
}
