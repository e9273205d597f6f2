import type { Command } from 'commander';
import { runOperation, type OfflineOptions } from '../daemon/ops/offline.js';
import { printResult, table } from './cli-util.js';

interface Status {
  self: string;
  leader: string | null;
  members: Array<{ id: string; address: string; state: string }>;
  clubs: Array<{ id: string; primary: string | null; standbys: string[]; lag: number | null; served?: boolean; waitingMs?: number | null }>;
}

/** This member's part in a club: serving it, or named its primary and taking it over (for how long). */
function hereOf(c: Status['clubs'][number]): string {
  if (c.served) return 'serves';
  if (typeof c.waitingMs === 'number') return `taking over (${Math.round(c.waitingMs / 1000)} s)`;
  return '-';
}

/** `commusicctl cluster ...` (docs/CLUSTER.md): on the running daemon of a cluster member. */
export function registerClusterCommands(program: Command, dataDir: () => string, offline: () => OfflineOptions): void {
  const run = (op: string, args: unknown) => runOperation(dataDir(), op, args, offline());
  const cluster = program.command('cluster').description('several servers: members, placement, drain (on a running cluster member)');
  cluster
    .command('status')
    .description("members with their state, and each club's primary, standbys, replication lag (entries) and whether this member serves it")
    .option('--json', 'print JSON: {members: [{id, address, state}], clubs: [{id, primary, standbys, lag, served, waitingMs}]}')
    .action(async (o: { json?: boolean }) => {
      const { result } = await run('cluster.status', {});
      const s = result as Status;
      printResult(s, o.json, (r) =>
        [
          `member ${r.self}; placement leader ${r.leader ?? '(none)'}`,
          '',
          table(['member', 'address', 'state'], r.members.map((m) => [m.id, m.address, m.state])),
          '',
          table(['club', 'primary', 'standbys', 'lag', 'here'], r.clubs.map((c) => [c.id, c.primary ?? '-', c.standbys.join(',') || '-', c.lag === null ? '?' : String(c.lag), hereOf(c)])),
        ].join('\n'),
      );
    });
  cluster
    .command('drain <id>')
    .description("hand every club of member ID over to other members (at the planned rate), and keep it free of clubs")
    .option('--json', 'print JSON')
    .action(async (id: string, o: { json?: boolean }) => {
      const { result } = await run('cluster.drain', { id, drained: true });
      printResult(result, o.json, () => `member ${id} is draining: its clubs move to other members (cluster status shows the progress)`);
    });
  cluster
    .command('undrain <id>')
    .description('let member ID receive clubs again')
    .option('--json', 'print JSON')
    .action(async (id: string, o: { json?: boolean }) => {
      const { result } = await run('cluster.drain', { id, drained: false });
      printResult(result, o.json, () => `member ${id} may receive clubs again`);
    });
}
