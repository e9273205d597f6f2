/**
 * `npm run bench`: every figure next to a baseline measured in the same run, as a ratio.
 * Groups: channel, store, data, bans, backup, flood, clubs, growth, cluster (bench/<group>.ts).
 * Options: `--only channel[,store,data,bans,backup,flood,clubs,growth,cluster]`, `--quick`;
 * for the channel group also `--cases handshake,ping1,ping8,pipe,bulk,memory` and `--baselines tls,h2`.
 */
import os from 'node:os';
import { runBackupBench } from './backup.js';
import { runBanBench } from './bans.js';
import { runChannelBench } from './channel.js';
import { runDataBench } from './data.js';
import { runFloodBench } from './flood.js';
import { runGrowthBench } from './growth.js';
import { runClubsBench } from './clubs.js';
import { runClusterBench } from './cluster.js';
import { runStoreBench } from './store.js';
import { normalizeRow, ratioOf, type LegacyRow, type Row } from './row.js';

interface Group {
  name: string;
  run(quick: boolean): Promise<LegacyRow[]>;
}

const CHANNEL_CASES = ['handshake', 'ping1', 'ping8', 'pipe', 'bulk', 'memory'];
const CHANNEL_BASELINES = ['tls', 'h2'];

/** The comma-separated list after `flag`, or undefined; exits with status 2 on an empty list or an unknown name. */
function listArg(args: string[], flag: string, allowed: readonly string[]): string[] | undefined {
  const i = args.indexOf(flag);
  if (i < 0) return undefined;
  const list = (args[i + 1] ?? '').split(',').filter(Boolean);
  const unknown = list.filter((x) => !allowed.includes(x));
  if (list.length === 0 || unknown.length > 0) {
    console.error(`${flag} takes a comma-separated list of ${allowed.join(', ')}${unknown.length ? `; unknown: ${unknown.join(', ')}` : ''}`);
    process.exit(2);
  }
  return list;
}

const benchArgs = process.argv.slice(2);
const channelCases = listArg(benchArgs, '--cases', CHANNEL_CASES);
const channelBaselines = listArg(benchArgs, '--baselines', CHANNEL_BASELINES) as ('tls' | 'h2')[] | undefined;

const GROUPS: Group[] = [
  {
    name: 'channel',
    run: (quick) => runChannelBench({ quick, ...(channelCases ? { cases: channelCases } : {}), ...(channelBaselines ? { baselines: channelBaselines } : {}) }),
  },
  { name: 'store', run: () => runStoreBench() },
  { name: 'data', run: (quick) => runDataBench({ quick }) },
  { name: 'bans', run: () => runBanBench() },
  { name: 'backup', run: (quick) => runBackupBench({ quick }) },
  { name: 'flood', run: (quick) => runFloodBench({ quick }) },
  { name: 'clubs', run: (quick) => runClubsBench({ quick }) },
  { name: 'growth', run: (quick) => runGrowthBench({ quick }) },
  { name: 'cluster', run: (quick) => runClusterBench({ quick }) },
];

function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const a = Math.abs(n);
  const digits = a >= 100 ? 0 : a >= 10 ? 1 : 2;
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function machine(): string {
  const cpus = os.cpus();
  return [
    `node ${process.version} (${process.platform} ${os.release()} ${process.arch})`,
    `cpu ${cpus[0]?.model ?? 'unknown'}, nproc ${os.availableParallelism()}`,
    `memory ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
  ].join('; ');
}

export function formatTable(rows: Row[]): string {
  const header = ['group', 'figure', 'ours', 'baseline', 'ratio', 'target', 'met'];
  const lines = rows.map((r) => {
    const ratio = ratioOf(r);
    return [
      r.group,
      r.name,
      `${fmt(r.value)} ${r.unit}`,
      `${fmt(r.baseline)} ${r.unit} (${r.baselineName})`,
      Number.isFinite(ratio) ? `${ratio.toFixed(2)}x ${r.higherIsBetter ? '(o/b)' : '(b/o)'}` : 'n/a',
      r.target ?? '',
      r.met === undefined ? '' : r.met ? 'yes' : 'NO',
    ];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...lines.map(line)].join('\n');
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const quick = args.includes('--quick');
  const i = args.indexOf('--only');
  const only = i >= 0 ? (args[i + 1] ?? '').split(',').filter(Boolean) : undefined;
  const unknown = only?.filter((o) => !GROUPS.some((g) => g.name === o)) ?? [];
  if (i >= 0 && (!only || only.length === 0 || unknown.length > 0)) {
    console.error(`--only takes a comma-separated list of ${GROUPS.map((g) => g.name).join(', ')}${unknown.length ? `; unknown: ${unknown.join(', ')}` : ''}`);
    process.exit(2);
  }
  const started = Date.now();
  const rows: Row[] = [];
  for (const g of GROUPS) {
    if (only && !only.includes(g.name)) continue;
    process.stderr.write(`bench ${g.name}${quick ? ' (quick)' : ''} ...\n`);
    rows.push(...(await g.run(quick)).map((r) => normalizeRow(r, g.name)));
  }
  console.log(`ComMusic benchmarks, ${new Date().toISOString()}${quick ? ' (--quick)' : ''}`);
  console.log(machine());
  console.log('');
  console.log(formatTable(rows));
  console.log('');
  console.log('ratio: (o/b) = ours / baseline where higher is better; (b/o) = baseline / ours where lower is better. Above 1 means ours is better.');
  const notes = rows.filter((r) => r.note).map((r) => `- ${r.group} / ${r.name}: ${r.note}`);
  if (notes.length) console.log(['notes:', ...notes].join('\n'));
  console.log(`total ${((Date.now() - started) / 1000).toFixed(0)} s`);
}

main().catch((e: unknown) => {
  console.error('bench failed:', e);
  process.exit(1);
});
