/** The `commusicd` command tree, built at import; bin/commusicd.ts runs it. Tests walk it. */
import { Option } from 'commander';
import { runDaemon } from '../daemon/main/main.js';
import { newProgram, printResult, promptSecret, readSecretFile, usage } from './cli-util.js';
import { loadConfig } from '../daemon/main/config.js';
import { passphraseOption } from './ctl-clubs.js';
import type { OfflineOptions } from '../daemon/ops/offline.js';

export const program = newProgram('commusicd', 'ComMusic secure server daemon')
  .option('--data <dir>', 'data folder (default ./data, env COMMUSIC_DATA)')
  .option('--listen <host:port>', 'client protocol address (default 127.0.0.1:7443, env COMMUSIC_LISTEN)')
  .option('--health-listen <host:port>', 'HTTPS health and metrics endpoint (default 127.0.0.1:7444, env COMMUSIC_HEALTH_LISTEN)')
  .option('--web-listen <host:port>', 'HTTPS web application for club members (off unless given, env COMMUSIC_WEB_LISTEN)')
  .option('--cluster-etcd <urls>', 'join the cluster on these etcd members: URL[,URL...] (docs/CLUSTER.md; off unless given)')
  .option('--node-id <id>', "this server's id in the cluster (with --cluster-etcd)")
  .option('--advertise <host:port>', 'address clients are redirected to (default: the listen address)')
  .option('--config <file>', 'configuration file (env COMMUSIC_CONFIG)')
  .option('--passphrase-fd <n>', 'read the master key passphrase from this file descriptor')
  .option('--passphrase-file <file>', 'read the master key passphrase from this file (first line; e.g. a systemd credential)')
  .option('--log-level <level>', 'error, warn, info or debug')
  .addOption(new Option('--log-format <format>', 'log lines as json or text (env COMMUSIC_LOG_FORMAT)').choices(['json', 'text']))
  .option('--check-config', 'read and validate the configuration (file, environment, flags), print the result and exit: 0 valid, 1 not')
  .option('--json', 'with --check-config: print the result (or the error on stderr) as JSON')
  .action(async (o: { data?: string; listen?: string; healthListen?: string; webListen?: string; clusterEtcd?: string; nodeId?: string; advertise?: string; config?: string; logLevel?: string; logFormat?: string; passphraseFd?: string; passphraseFile?: string; checkConfig?: boolean; json?: boolean }) => {
    if (o.checkConfig) {
      const file = o.config ?? process.env['COMMUSIC_CONFIG'];
      const cfg = loadConfig({ ...(file ? { file } : {}), env: process.env, flags: { ...(o.data ? { dataDir: o.data } : {}), ...(o.listen ? { listen: o.listen } : {}), ...(o.healthListen ? { healthListen: o.healthListen } : {}), ...(o.webListen ? { webListen: o.webListen } : {}), ...(o.logLevel ? { logLevel: o.logLevel } : {}), ...(o.logFormat ? { logFormat: o.logFormat } : {}), ...clusterFlags(o) } });
      printResult({ ok: true, file: file ?? null, dataDir: cfg.dataDir, listen: cfg.listen, healthListen: cfg.health.enabled ? cfg.health.listen : null }, o.json, (r) => `configuration OK${r.file ? ` (${r.file})` : ' (embedded default)'}: data ${r.dataDir}, listening on ${r.listen}${r.healthListen ? `, health on ${r.healthListen}` : ''}`);
      return;
    }
    if (o.passphraseFd !== undefined && o.passphraseFile !== undefined) usage('give either --passphrase-fd or --passphrase-file, not both');
    const start = (passphrase: OfflineOptions) =>
      runDaemon({
        ...passphrase,
        ...((o.config ?? process.env['COMMUSIC_CONFIG']) ? { file: (o.config ?? process.env['COMMUSIC_CONFIG'])! } : {}),
        env: process.env,
        flags: { ...(o.data ? { dataDir: o.data } : {}), ...(o.listen ? { listen: o.listen } : {}), ...(o.healthListen ? { healthListen: o.healthListen } : {}), ...(o.webListen ? { webListen: o.webListen } : {}), ...(o.logLevel ? { logLevel: o.logLevel } : {}), ...(o.logFormat ? { logFormat: o.logFormat } : {}), ...clusterFlags(o) },
      });
    try {
      await start(o.passphraseFile !== undefined ? { passphrase: readSecretFile(o.passphraseFile) } : passphraseOption(o.passphraseFd));
    } catch (e) {
      // A passphrase-protected master key and no --passphrase-fd: ask, when someone is there to answer.
      if ((e as { code?: string }).code !== 'PASSPHRASE_REQUIRED' || o.passphraseFd !== undefined || o.passphraseFile !== undefined || !process.stdin.isTTY) throw e;
      await start({ passphrase: await promptSecret('master key passphrase: ') });
    }
  });

/** --cluster-etcd, --node-id, --advertise as configuration flags (config.ts maps them under `cluster`). */
function clusterFlags(o: { clusterEtcd?: string; nodeId?: string; advertise?: string }): { clusterEtcd?: string; nodeId?: string; advertise?: string } {
  return { ...(o.clusterEtcd ? { clusterEtcd: o.clusterEtcd } : {}), ...(o.nodeId ? { nodeId: o.nodeId } : {}), ...(o.advertise ? { advertise: o.advertise } : {}) };
}
