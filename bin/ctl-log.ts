import type { Command } from 'commander';
import { runOperation, type OfflineOptions } from '../daemon/ops/offline.js';
import type { AuditEntry, VerifyResult } from '../storage/club/audit-log.js';
import { neutralise, neutraliseBlock, safeJson } from '../daemon/common/neutralise.js';

/**
 * `commusicctl log show --club ID [--since T] [--until T] [--user U] [--action A] [--entity E] [--json]`
 * and `commusicctl log verify --club ID [--json]` (exit 1 when the chain is broken, naming the
 * first bad entry). Through the running daemon when one answers, else on the data folder.
 */
function changesText(c: unknown): string {
  if (c === null || c === undefined) return '';
  if (typeof c !== 'object') return String(c);
  return Object.entries(c as Record<string, unknown>)
    .map(([k, v]) => (v && typeof v === 'object' && 'old' in v && 'new' in v ? `${k}: ${JSON.stringify((v as { old: unknown }).old)} -> ${JSON.stringify((v as { new: unknown }).new)}` : `${k}: ${JSON.stringify(v)}`))
    .join('; ');
}

export function registerLogCommands(program: Command, dataDir: () => string, offline: () => OfflineOptions): void {
  const log = program.command('log').description("a club's change log: show and verify");
  log
    .command('show')
    .description('entries (oldest first) with time, user, address, action, record and changes')
    .requiredOption('--club <id>', 'club id')
    .option('--since <time>', 'from this date or ISO time')
    .option('--until <time>', 'before this date or ISO time')
    .option('--user <name>', 'only this user')
    .option('--action <action>', 'only this action (login, login.failed, logout, create, update, delete, rights.set, export, ...)')
    .option('--entity <entity>', 'only this entity (persons, users, ...)')
    .option('--limit <n>', 'at most this many entries per page', '1000')
    .option('--after <seq>', 'entries after this sequence number (next page)')
    .option('--json', 'print JSON')
    .action(async (o: { club: string; since?: string; until?: string; user?: string; action?: string; entity?: string; limit: string; after?: string; json?: boolean }) => {
      const { result } = await runOperation(
        dataDir(),
        'log.show',
        {
          club: o.club,
          ...(o.since ? { since: o.since } : {}),
          ...(o.until ? { until: o.until } : {}),
          ...(o.user ? { user: o.user } : {}),
          ...(o.action ? { action: o.action } : {}),
          ...(o.entity ? { entity: o.entity } : {}),
          ...(o.after ? { afterSeq: Number(o.after) } : {}),
          limit: Number(o.limit),
        },
        offline(),
      );
      const r = result as { entries: AuditEntry[]; nextAfterSeq: number | null };
      if (o.json) {
        process.stdout.write(`${safeJson(r)}\n`);
        return;
      }
      for (const e of r.entries) {
        const rec = e.entity ? ` ${neutralise(e.entity)}${e.recordId !== null ? ' ' + neutralise(String(e.recordId)) : ''}` : '';
        const fields = [String(e.seq), e.time, e.user ?? '-', e.ip ?? '-', `${e.action}`].map((f) => neutralise(String(f)));
        process.stdout.write(`${fields.join('\t')}${rec}\t${neutralise(changesText(e.changes))}\n`);
      }
      if (r.nextAfterSeq !== null) process.stdout.write(`more: --after ${r.nextAfterSeq}\n`);
    });
  log
    .command('verify')
    .description('check the hash chain and the signed heads; names the first bad entry')
    .requiredOption('--club <id>', 'club id')
    .option('--json', 'print JSON')
    .action(async (o: { club: string; json?: boolean }) => {
      const { result } = await runOperation(dataDir(), 'log.verify', { club: o.club }, offline());
      const r = result as VerifyResult & { club: string };
      if (o.json) process.stdout.write(`${safeJson(r)}\n`);
      else if (r.ok) process.stdout.write(`change log of ${neutralise(r.club)}: OK, ${r.entries} entries, signed up to entry ${r.signedUpTo} (${r.signedHeads} signed heads), ${r.unsignedTail} entries after the last signed head; anchored outside the store up to entry ${r.anchoredUpTo} (${r.anchors} anchors), ${r.unanchoredTail} entries after the last anchor\n`);
      else process.stderr.write(neutraliseBlock(`change log of ${neutralise(r.club)}: BROKEN at entry ${r.firstBad!.seq}: ${neutralise(r.firstBad!.reason)}\n`));
      if (!r.ok) process.exitCode = 1;
    });
}
