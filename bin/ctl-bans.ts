import type { Command } from 'commander';
import { printResult } from './cli-util.js';
import { runOperation, type OfflineOptions } from '../daemon/offline.js';

interface BanRow {
  address: string;
  expires: string;
  reason: string;
  source: string;
  violationCount: number;
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
      const rows = result as BanRow[];
      printResult(rows, o.json, () =>
        rows.length === 0 ? 'no active bans' : rows.map((b) => `${b.address}\tuntil ${b.expires}\t${b.source}\t${b.violationCount} violations\t${b.reason}`).join('\n'),
      );
    });
  bans
    .command('add <address>')
    .description('ban an address or CIDR range')
    .requiredOption('--for <duration>', 'how long: 90s, 15m, 2h, 7d')
    .requiredOption('--reason <text>', 'why (shown in bans list)')
    .option('--json', 'print JSON')
    .action(async (address: string, o: { for: string; reason: string; json?: boolean }) => {
      const { result, via } = await run('bans.add', { address, duration: o.for, reason: o.reason });
      const b = result as BanRow;
      printResult(result, o.json, () => `banned ${b.address} until ${b.expires} (${via})`);
    });
  bans
    .command('remove <address>')
    .description('lift the ban on exactly this address or range')
    .option('--json', 'print JSON')
    .action(async (address: string, o: { json?: boolean }) => {
      const { result } = await run('bans.remove', { address });
      const r = result as { address: string; removed: boolean };
      if (!r.removed && !o.json) throw Object.assign(new Error(`no ban on ${r.address}`), { code: 'BAN_NOT_FOUND' });
      printResult(result, o.json, () => `removed the ban on ${r.address}`);
    });
  const exempt = bans.command('exempt').description('addresses and ranges that are never banned (still logged)');
  exempt
    .command('list')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const { result } = await run('bans.exempt.list', {});
      const rows = result as { address: string; note: string }[];
      printResult(rows, o.json, () => (rows.length === 0 ? 'no exemptions' : rows.map((e) => `${e.address}\t${e.note}`).join('\n')));
    });
  exempt
    .command('add <address>')
    .option('--note <text>', 'why this range is exempt')
    .option('--json', 'print JSON')
    .action(async (address: string, o: { note?: string; json?: boolean }) => {
      const { result } = await run('bans.exempt.add', { address, ...(o.note ? { note: o.note } : {}) });
      printResult(result, o.json, () => `exempted ${(result as { address: string }).address}`);
    });
  exempt
    .command('remove <address>')
    .option('--json', 'print JSON')
    .action(async (address: string, o: { json?: boolean }) => {
      const { result } = await run('bans.exempt.remove', { address });
      printResult(result, o.json, () => `removed the exemption of ${(result as { address: string }).address}`);
    });
}
