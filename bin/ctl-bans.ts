import type { Command } from 'commander';
import { printResult, table } from './cli-util.js';
import { runOperation, type OfflineOptions } from '../daemon/ops/offline.js';

interface BanRow {
  address: string;
  expires: string;
  reason: string;
  source: string;
  violationCount: number;
}

interface RemoveRow {
  address: string;
  removed: boolean;
  coveredBy?: { address: string; expires: string; reason: string }[];
}

interface CheckRow {
  address: string;
  verdict: 'banned' | 'exempt' | 'admitted';
  ban: { address: string; expires: string; reason: string; source: string } | null;
  exempt: { address: string; note: string } | null;
}


/** `commusicctl bans ...`: on the running daemon (effective at once) or on the data folder. */
export function registerBanCommands(program: Command, dataDir: () => string, offline: () => OfflineOptions): void {
  const run = (op: string, args: unknown) => runOperation(dataDir(), op, args, offline());
  const bans = program.command('bans').description('IP bans: list, add, remove, exemptions');
  bans
    .command('list')
    .description('active bans with expiry, reason and the violations behind them')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const { result } = await run('bans.list', {});
      printResult(result as BanRow[], o.json, (rows) =>
        rows.length === 0 ? 'no active bans' : table(['ADDRESS', 'UNTIL', 'SOURCE', 'VIOLATIONS', 'REASON'], rows.map((b) => [b.address, b.expires, b.source, b.violationCount, b.reason])),
      );
    });
  bans
    .command('add <address>')
    .description('ban an address or CIDR range (exempt addresses are never banned)')
    .requiredOption('--for <duration>', 'how long, with a unit: 90s, 15m, 2h, 7d')
    .requiredOption('--reason <text>', 'why (shown in bans list)')
    .option('--force', 'ban a range although it contains exempt addresses (they stay admitted)')
    .option('--yes', 'confirm a range wider than /16 (IPv4) or /32 (IPv6)')
    .option('--json', 'print JSON')
    .action(async (address: string, o: { for: string; reason: string; force?: boolean; yes?: boolean; json?: boolean }) => {
      const { result, via } = await run('bans.add', { address, duration: o.for, reason: o.reason, ...(o.force ? { force: true } : {}), ...(o.yes ? { yes: true } : {}) });
      printResult(result as BanRow & { exemptInside?: string[] }, o.json, (b) =>
        `banned ${b.address} until ${b.expires} (${via})${b.exemptInside?.length ? `; exempt ${b.exemptInside.join(', ')} stay admitted` : ''}`,
      );
    });
  bans
    .command('remove <address>')
    .description('lift the ban on exactly this address or range')
    .option('--json', 'print JSON')
    .action(async (address: string, o: { json?: boolean }) => {
      const { result } = await run('bans.remove', { address });
      const r = result as RemoveRow;
      if (!r.removed && !o.json) {
        const covered = r.coveredBy ?? [];
        const why = covered.length
          ? `; it lies inside the ban on ${covered.map((c) => `${c.address} (until ${c.expires})`).join(', ')}: lift that with "bans remove ${covered[0]!.address}" (this unbans the whole range)`
          : '';
        throw Object.assign(new Error(`no ban on ${r.address}${why}`), { code: 'BAN_NOT_FOUND' });
      }
      printResult(r, o.json, (r) => `removed the ban on ${r.address}`);
    });
  bans
    .command('check <ip>')
    .description('which ban or exemption applies to this address, and until when')
    .option('--json', 'print JSON')
    .action(async (ip: string, o: { json?: boolean }) => {
      const { result } = await run('bans.check', { address: ip });
      printResult(result as CheckRow, o.json, (r) => {
        const ban = r.ban ? `banned by ${r.ban.address} until ${r.ban.expires} (${r.ban.source}: ${r.ban.reason})` : 'no ban';
        const ex = r.exempt ? `exempt by ${r.exempt.address}${r.exempt.note ? ` (${r.exempt.note})` : ''}` : 'not exempt';
        const verdict = r.verdict === 'banned' ? 'BANNED' : r.verdict === 'exempt' ? 'admitted (exempt)' : 'admitted';
        return `${r.address}: ${verdict}\n  ${ban}\n  ${ex}${r.verdict === 'exempt' && r.ban ? '\n  the exemption wins over the ban' : ''}`;
      });
    });
  const exempt = bans.command('exempt').description('addresses and ranges that are never banned (still logged)');
  exempt
    .command('list')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const { result } = await run('bans.exempt.list', {});
      const rows = result as { address: string; note: string }[];
      printResult(rows, o.json, (rows) => (rows.length === 0 ? 'no exemptions' : table(['ADDRESS', 'NOTE'], rows.map((e) => [e.address, e.note]))));
    });
  exempt
    .command('add <address>')
    .option('--note <text>', 'why this range is exempt')
    .option('--json', 'print JSON')
    .action(async (address: string, o: { note?: string; json?: boolean }) => {
      const { result } = await run('bans.exempt.add', { address, ...(o.note ? { note: o.note } : {}) });
      printResult(result as { address: string }, o.json, (r) => `exempted ${r.address}`);
    });
  exempt
    .command('remove <address>')
    .option('--json', 'print JSON')
    .action(async (address: string, o: { json?: boolean }) => {
      const { result } = await run('bans.exempt.remove', { address });
      printResult(result as { address: string }, o.json, (r) => `removed the exemption of ${r.address}`);
    });
}
