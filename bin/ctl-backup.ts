import type { Command } from 'commander';
import { SingleBar, Presets } from 'cli-progress';
import { resolve } from 'node:path';
import { existsSync } from 'node:fs';
import { userInfo } from 'node:os';
import { createInterface } from 'node:readline/promises';
import { dataPaths } from '../daemon/main/config.js';
import { callControl } from '../daemon/ops/control-socket.js';
import { offlineContext, runOperation, type OfflineOptions } from '../daemon/ops/offline.js';
import { buildOperations } from '../daemon/ops/ops.js';
import { decryptArchiveToFile, fileSource } from '../storage/backup/backup-archive.js';
import { fail, getSecret, printResult, usage } from './cli-util.js';
import { neutraliseBlock, neutraliseDeep } from '../daemon/common/neutralise.js';


/** Run many operations on one connection target: the daemon if it answers, else the data folder. */
async function session(dataDir: string, offline: OfflineOptions): Promise<{ run(op: string, args: unknown): Promise<unknown>; via: string; close(): Promise<void> }> {
  const sock = dataPaths(dataDir).controlSocket;
  const probe = await callControl(sock, 'backup.clubs', {});
  if (probe) return { via: 'daemon', run: async (op, args) => (await callControl(sock, op, args, 3_600_000))?.result, close: async () => {} };
  const ctx = offlineContext(dataDir, offline);
  const reg = buildOperations();
  return { via: 'data-folder', run: (op, args) => reg.run(ctx, op, args), close: () => ctx.close() };
}

interface ClubRun {
  clubs: number;
  ok: number;
  /** Archive bytes (older daemons do not report it). */
  bytes?: number;
  failedClubs: Array<{ clubId: string; error: string }>;
  destinations: Record<string, { stored: number; failed: number; down?: string }>;
}

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

function trustArgs(keys: string[] | undefined): { trustKeys?: string[] } {
  return keys && keys.length ? { trustKeys: keys.map((k) => (existsSync(k) ? resolve(k) : k)) } : {};
}

/**
 * Who runs this command, for the restore entry in the club's change log: the OS account of
 * this process and, under sudo, the account that called sudo (SUDO_USER). Both are what the
 * local system says; see docs/SECURITY.md for how far that can be trusted.
 */
export function operatorIdentity(): { user: string; sudoUser?: string; uid?: number } {
  let user = 'uid-unknown';
  try {
    user = userInfo().username || `uid-${process.getuid?.() ?? 'unknown'}`;
  } catch {
    user = `uid-${process.getuid?.() ?? 'unknown'}`;
  }
  const sudo = process.env['SUDO_USER'];
  const clean = (s: string) => s.replace(/[^\p{L}\p{N}._@$-]/gu, '_').slice(0, 64);
  return { user: clean(user), ...(sudo ? { sudoUser: clean(sudo) } : {}), ...(process.getuid ? { uid: process.getuid() } : {}) };
}

interface RestorePlanView {
  clubId: string;
  createdAt: string;
  origin: { fingerprint?: string; trustedAs: string };
  inArchive: { tables: Record<string, number>; documents: number; log: { entries: number; firstSeq: number | null; lastSeq: number | null } };
  live: { tables: Record<string, number>; documents: number; log: { entries: number; firstSeq: number | null; lastSeq: number | null } } | null;
  logEntriesAfterArchive: number;
}

function describePlan(p: RestorePlanView): string {
  const lines = [`restore of club ${p.clubId} from the state of ${p.createdAt} (archive made by ${p.origin.fingerprint ? `server key ${p.origin.fingerprint}` : 'this server'}, ${p.origin.trustedAs})`];
  const names = new Set([...Object.keys(p.inArchive.tables), ...Object.keys(p.live?.tables ?? {})]);
  // The documents table is the documents line below; listing it here too printed it twice.
  names.delete('documents');
  for (const t of [...names].sort()) lines.push(`  ${t}: ${p.live ? `${p.live.tables[t] ?? 0} now -> ` : ''}${p.inArchive.tables[t] ?? 0}`);
  lines.push(`  documents: ${p.live ? `${p.live.documents} now -> ` : ''}${p.inArchive.documents}`);
  lines.push(`  change log in the archive: entries ${p.inArchive.log.firstSeq ?? '-'}..${p.inArchive.log.lastSeq ?? '-'}`);
  if (p.live) lines.push(`  change log now: entries ${p.live.log.firstSeq ?? '-'}..${p.live.log.lastSeq ?? '-'}; all are kept, ${p.logEntriesAfterArchive} of them written after the archive`);
  else lines.push('  the club is not on this server: it would be created');
  return lines.join('\n');
}

async function ask(question: string): Promise<string> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return (await rl.question(question)).trim();
  } finally {
    rl.close();
  }
}

/** "12.3 MiB" style size (binary units). */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** Time left from the average time per club so far: "about 3m 20s left" (ms in, text out). */
export function timeLeft(elapsedMs: number, done: number, total: number): string {
  if (done <= 0) return 'time left unknown';
  if (done >= total) return 'done';
  const s = Math.round(((elapsedMs / done) * (total - done)) / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return `about ${h ? `${h}h ` : ''}${h || m ? `${m}m ` : ''}${s % 60}s left`;
}

/** `commusicctl backup ...`. */
export function registerBackupCommands(program: Command, dataDir: () => string, offline: () => OfflineOptions): void {
  const backup = program.command('backup').description('encrypted club backups: run, list, verify, restore, decrypt');
  const cfg = (o: { config?: string }) => (o.config ? { configFile: resolve(o.config) } : {});
  backup
    .command('run')
    .description('back up clubs now to every destination (progress bar); --all also applies retention and sends the club mails')
    .option('--club <id>', 'one club')
    .option('--all', 'every club')
    .option('--config <file>', 'daemon configuration (destinations) when no daemon runs; else COMMUSIC_CONFIG')
    .option('--json', 'print JSON')
    .action(async (o: { club?: string; all?: boolean; config?: string; json?: boolean }) => {
      if (!o.club === !o.all) usage('give --club ID or --all');
      const s = await session(dataDir(), offline());
      try {
        const clubs = o.club ? [o.club] : ((await s.run('backup.clubs', {})) as string[]);
        const bar = !o.json && process.stderr.isTTY ? new SingleBar({ format: 'backup [{bar}] {value}/{total} clubs | {size} | {left} | {club}', stream: process.stderr }, Presets.shades_classic) : undefined;
        bar?.start(clubs.length, 0, { club: '', size: formatBytes(0), left: 'time left unknown' });
        const total: ClubRun = { clubs: 0, ok: 0, bytes: 0, failedClubs: [], destinations: {} };
        const started = Date.now();
        // Ctrl-C: the terminal is restored (progress bar stopped) and the operator is told what
        // goes on: through the daemon the club being archived finishes there; no further club starts.
        let current: string | undefined;
        const onInterrupt = () => {
          bar?.stop();
          const left = clubs.length - total.clubs - (current ? 1 : 0);
          process.stderr.write(
            `interrupted: ${current ? (s.via === 'daemon' ? `the backup of club ${current} continues in the daemon and finishes there; ` : `the backup of club ${current} was stopped; `) : ''}${left} club(s) not started. ` +
              `"commusicctl backup list" shows what was stored; "commusicctl backup run --club ID" or "--all" runs again` +
              `${s.via === 'daemon' ? '; "commusicctl backup cancel" stops a run the daemon carries on (its scheduled run, or one this joined) after the club under way' : ''}.\n`,
          );
          process.exit(130);
        };
        process.once('SIGINT', onInterrupt);
        for (const c of clubs) {
          current = c;
          const r = (await s.run('backup.run', { clubs: [c], ...cfg(o) })) as ClubRun;
          current = undefined;
          total.clubs += r.clubs;
          total.ok += r.ok;
          total.failedClubs.push(...r.failedClubs);
          for (const [d, v] of Object.entries(r.destinations)) {
            const t = (total.destinations[d] ??= { stored: 0, failed: 0 });
            t.stored += v.stored;
            t.failed += v.failed;
            if (v.down) t.down = v.down;
          }
          total.bytes! += r.bytes ?? 0;
          const left = timeLeft(Date.now() - started, total.clubs, clubs.length);
          bar?.increment(1, { club: c, size: formatBytes(total.bytes!), left });
          // Without a terminal (a log, a pipe) one line per club instead of the bar.
          if (!bar && !o.json) process.stderr.write(`backup ${total.clubs}/${clubs.length} clubs: ${c} ${r.failedClubs.length ? 'failed' : 'done'}, ${formatBytes(total.bytes!)} so far, ${left}\n`);
        }
        bar?.stop();
        process.removeListener('SIGINT', onInterrupt);
        const finish = o.all ? await s.run('backup.run', { finish: true, ...cfg(o) }) : undefined;
        const result = { via: s.via, ...total, ...(finish ? { finish } : {}) };
        printResult(result, o.json, (total) =>
          [
            `backed up ${total.ok} of ${total.clubs} clubs, ${formatBytes(total.bytes ?? 0)} (via ${total.via})`,
            ...Object.entries(total.destinations).map(([d, v]) => `  ${d}: ${v.stored} stored${v.failed ? `, ${v.failed} missing${v.down ? ` (${v.down})` : ''}` : ''}`),
            ...total.failedClubs.map((f) => `  failed ${f.clubId}: ${f.error}`),
          ].join('\n'),
        );
        if (total.failedClubs.length || Object.values(total.destinations).some((v) => v.failed)) process.exitCode = 1;
      } finally {
        await s.close();
      }
    });
  backup
    .command('cancel')
    .description("stop the daemon's running backup run: no further club starts, the clubs under way finish")
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const { result } = await runOperation(dataDir(), 'backup.cancel', {}, offline());
      const r = result as { running: boolean; via: string };
      printResult(r, o.json, (r) => (r.running ? 'cancelling: the daemon starts no further club; the clubs under way finish ("commusicctl backup list" shows what was stored)' : r.via === 'offline' ? 'no daemon runs here, so no backup run to cancel' : 'no backup run is going on'));
    });
  backup
    .command('list')
    .description('archives on every destination, last success per destination, missing copies')
    .option('--club <id>', 'only this club')
    .option('--destination <name>', 'only this destination')
    .option('--config <file>', 'daemon configuration when no daemon runs')
    .option('--json', 'print JSON')
    .action(async (o: { club?: string; destination?: string; config?: string; json?: boolean }) => {
      const { result } = await runOperation(dataDir(), 'backup.list', { ...(o.club ? { club: o.club } : {}), ...(o.destination ? { destination: o.destination } : {}), ...cfg(o) }, offline());
      const r = result as {
        archives: Array<{ destination: string; name?: string; time?: string; size?: number; error?: string }>;
        deletedClubs?: Array<{ clubId: string; deletedAt: string; archivesRemoved: number; removedAt?: string[]; failed?: Array<{ destination: string }> }>;
        lastBackups: Record<string, string>;
        gaps: unknown[];
      };
      printResult(r, o.json, (r) =>
        [
          ...(r.archives.length ? r.archives.map((a) => (a.error ? `${a.destination}\tERROR ${a.error}` : `${a.destination}:${a.name}\t${a.time}\t${a.size} bytes`)) : ['no archives']),
          ...(r.deletedClubs ?? []).map(
            (d) =>
              `deleted club ${d.clubId} (${d.deletedAt}): archive key destroyed, ${d.archivesRemoved} archives removed${d.removedAt?.length ? ` at ${d.removedAt.join(', ')}` : ''}${d.failed?.length ? `; not reached: ${d.failed.map((f) => f.destination).join(', ')} (archives there open nowhere; retention removes them)` : ''}`,
          ),
          ...Object.entries(r.lastBackups).map(([d, t]) => `last success ${d}: ${t}`),
          ...(r.gaps.length ? [`${r.gaps.length} copies missing (retried automatically)`] : []),
        ].join('\n'),
      );
    });
  backup
    .command('verify <archive>')
    .description('check an archive completely (FILE or DESTINATION:NAME): authentication, structure, hashes, SQLite integrity, change log')
    .option('--club <id>', 'with DESTINATION:latest')
    .option('--passphrase-stdin', "a club archive: read the club's backup passphrase from stdin")
    .option('--passphrase-file <file>', "a club archive: read the club's backup passphrase from this file")
    .option('--ask-passphrase', "a club archive: ask for the club's backup passphrase on the terminal")
    .option('--trust-key <fp|file>', "also accept archives signed by this server key (SHA-256 fingerprint or PEM file); repeatable", collect, [])
    .option('--config <file>', 'daemon configuration when no daemon runs')
    .option('--json', 'print JSON')
    .action(async (from: string, o: { club?: string; passphraseStdin?: boolean; passphraseFile?: string; askPassphrase?: boolean; trustKey: string[]; config?: string; json?: boolean }) => {
      const ref = /^[A-Za-z0-9_.-]{1,40}:/.test(from) ? from : resolve(from);
      // Checked before any secret is read or any store opened: it is a usage error, not a missing archive.
      if (/:latest$/.test(ref) && !o.club) usage(`${from}: DESTINATION:latest needs --club <id> (the newest archive of which club?)`);
      const passphrase = await getSecret("club's backup passphrase", 'passphrase', { stdin: o.passphraseStdin, file: o.passphraseFile }, { optional: !o.askPassphrase });
      const { result } = await runOperation(dataDir(), 'backup.verify', { from: ref, ...(o.club ? { club: o.club } : {}), ...(passphrase ? { passphrase } : {}), ...trustArgs(o.trustKey), ...cfg(o) }, offline());
      const r = result as { archive: string; clubId: string; createdAt: string; documents: number; tables: Record<string, number>; origin: { alg: string; fingerprint?: string; trustedAs: string }; auditChain: { entries: number; signedHeads: number; unsignedTail: number } | null };
      printResult(r, o.json, (r) =>
        `OK ${r.archive}: club ${r.clubId} of ${r.createdAt}, made by ${r.origin.fingerprint ? `server key ${r.origin.fingerprint}` : 'this server'} (${r.origin.trustedAs}), ${Object.values(r.tables).reduce((a, b) => a + b, 0)} rows in ${Object.keys(r.tables).length} tables, ${r.documents} documents${r.auditChain ? `, change log ${r.auditChain.entries} entries intact, ${r.auditChain.signedHeads} signed heads verified${r.auditChain.unsignedTail ? `, last ${r.auditChain.unsignedTail} entries not yet under a signed head` : ''}` : ''}`,
      );
    });
  backup
    .command('restore')
    .description("replace a club's data with an archive (into a fresh store, swapped in atomically, logged in the club's change log)")
    .requiredOption('--club <id>', 'the club')
    .requiredOption('--from <archive>', 'FILE, DESTINATION:NAME or DESTINATION:latest')
    .option('--passphrase-stdin', "a club archive: read the club's backup passphrase from stdin")
    .option('--passphrase-file <file>', "a club archive: read the club's backup passphrase from this file")
    .option('--ask-passphrase', "a club archive: ask for the club's backup passphrase on the terminal")
    .option('--trust-key <fp|file>', "also accept archives signed by this server key (SHA-256 fingerprint or PEM file); repeatable", collect, [])
    .option('--dry-run', 'check the archive and say what would change (rows per entity, documents, change-log range); change nothing')
    .option('--yes', 'replace the live club without asking (an automatic archive of it is taken first)')
    .option('--target <dir>', 'restore into this separate data folder (created with its own keys) instead of the live one')
    .option('--config <file>', 'daemon configuration when no daemon runs')
    .option('--json', 'print JSON')
    .action(async (o: { club: string; from: string; passphraseStdin?: boolean; passphraseFile?: string; askPassphrase?: boolean; trustKey: string[]; dryRun?: boolean; yes?: boolean; target?: string; config?: string; json?: boolean }) => {
      const passphrase = await getSecret("club's backup passphrase", 'passphrase', { stdin: o.passphraseStdin, file: o.passphraseFile }, { optional: !o.askPassphrase });
      const ref = /^[A-Za-z0-9_.-]{1,40}:/.test(o.from) ? o.from : resolve(o.from);
      const base = { club: o.club, from: ref, ...(passphrase ? { passphrase } : {}), ...trustArgs(o.trustKey), operator: operatorIdentity(), ...(o.target ? { target: resolve(o.target) } : {}), ...cfg(o) };
      const plan = async (): Promise<RestorePlanView> => (await runOperation(dataDir(), 'backup.restore', { ...base, dryRun: true }, offline())).result as RestorePlanView;
      if (o.dryRun) {
        const p = await plan();
        printResult(p, o.json, (p) => describePlan(p));
        return;
      }
      let yes = Boolean(o.yes);
      if (!yes && !o.passphraseStdin && process.stdin.isTTY && process.stderr.isTTY) {
        const p = await plan();
        process.stderr.write(neutraliseBlock(describePlan(neutraliseDeep(p))) + '\n');
        if (!p.live) yes = true;
        else yes = (await ask(`type the club id (${o.club}) to replace its live data: `)) === o.club;
        if (!yes) fail('restore cancelled; nothing was changed');
      }
      const { result } = await runOperation(dataDir(), 'backup.restore', { ...base, yes }, offline());
      const r = result as { archive: string; createdAt: string; documents: number; createdClub: boolean; preRestoreArchive: string | null; logEntriesAfterArchive: number; target?: string };
      printResult(r, o.json, (r) =>
        `restored club ${o.club}${r.target ? ` into the data folder ${r.target} (the live club is untouched)` : ''} from ${r.archive} (state of ${r.createdAt}, ${r.documents} documents)${r.createdClub ? '; the club was created on this server' : ''}${r.preRestoreArchive ? `\nthe replaced state is archived in ${r.preRestoreArchive}` : ''}${r.logEntriesAfterArchive ? `\n${r.logEntriesAfterArchive} change-log entries written after the archive were kept` : ''}`,
      );
    });
  backup
    .command('set-mail')
    .description('addresses that receive the nightly backup mail (premium and federation plans)')
    .requiredOption('--club <id>', 'the club')
    .requiredOption('--to <addresses>', 'comma-separated e-mail addresses ("" for none)')
    .option('--json', 'print JSON')
    .action(async (o: { club: string; to: string; json?: boolean }) => {
      const emails = o.to.split(',').map((s) => s.trim()).filter(Boolean);
      const { result } = await runOperation(dataDir(), 'backup.set-mail', { club: o.club, emails }, offline());
      const r = result as { emails: string[]; passphraseSet: boolean };
      printResult(r, o.json, (r) => `club ${o.club}: nightly backup mail to ${r.emails.join(', ') || 'nobody'}${r.passphraseSet ? '' : ' (no backup passphrase set yet: the club administrator sets it in the application)'}`);
    });
  backup
    .command('decrypt')
    .description('open a club archive (e.g. the mailed one) with the club passphrase: writes a plain tar (manifest.json, club.sqlite, documents/)')
    .requiredOption('--in <file>', 'the .cmbk archive')
    .requiredOption('--out <file>', 'the tar file to write')
    .option('--passphrase-stdin', "read the club's backup passphrase from stdin")
    .option('--passphrase-file <file>', "read the club's backup passphrase from this file (else asked on the terminal)")
    .option('--json', 'print JSON')
    .action(async (o: { in: string; out: string; passphraseStdin?: boolean; passphraseFile?: string; json?: boolean }) => {
      const passphrase = (await getSecret("club's backup passphrase", 'passphrase', { stdin: o.passphraseStdin, file: o.passphraseFile }))!;
      const r = await decryptArchiveToFile(fileSource(resolve(o.in)), { passphrase }, resolve(o.out));
      printResult(r, o.json, (r) => `decrypted backup of club ${r.clubId} of ${r.createdAt} (${r.documents} documents) to ${resolve(o.out)}`);
    });
}
