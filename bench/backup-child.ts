/**
 * The daemon under test for bench/backup.ts, in its own process: opens the data folder the parent
 * prepared (argv[2]), serves the club commands on 127.0.0.1:0 and runs the nightly backup of every
 * club to a local destination (argv[3]) when the parent sends {type: 'backup'}, answering
 * {type: 'backup-done', ok, ms}. {type: 'cpu'} answers the process's CPU time in microseconds.
 * Exits when the parent disconnects. The backup runs on this process's event loop, as in commusicd,
 * so requests over the socket wait for whatever the run does on the main thread.
 */
import { generateIdentity } from '../crypto/identity.js';
import { BackupService } from '../daemon/backup/backup-service.js';
import { registerClubCommands } from '../daemon/club/club-commands.js';
import { loadConfig } from '../daemon/main/config.js';
import { Dispatcher } from '../daemon/edge/dispatcher.js';
import { nullLogger } from '../daemon/common/log.js';
import { Daemon } from '../daemon/edge/server.js';
import { ViolationBus } from '../daemon/bans/violations.js';
import { openStorage } from '../storage/server/storage.js';

async function main(): Promise<void> {
  const dataDir = process.argv[2]!;
  const backups = process.argv[3]!;
  const storage = await openStorage({ dataDir, maxOpenStores: 1024 });
  const identity = generateIdentity();
  const dispatcher = new Dispatcher();
  const bus = new ViolationBus();
  registerClubCommands(dispatcher, { storage, violations: bus, identity });
  const config = loadConfig({ flags: { dataDir, listen: '127.0.0.1:0' } });
  const daemon = await Daemon.start({ config, identity, logger: nullLogger(), violations: bus, dispatcher });
  const svc = new BackupService({ storage, config: { destinations: [{ name: 'local', kind: 'local', path: backups }], parallelism: 2 } });
  const stop = async () => {
    await svc.close();
    await daemon.stop(0);
    storage.close();
    process.exit(0);
  };
  process.on('disconnect', () => void stop());
  process.on('message', (m: { type: string }) => {
    if (m.type === 'cpu') {
      const u = process.cpuUsage();
      process.send!({ type: 'cpu', micros: u.user + u.system });
    }
    if (m.type === 'backup') {
      const t0 = performance.now();
      void svc.runNightly({ mail: false, retention: false }).then((r) => process.send!({ type: 'backup-done', ok: r.ok, failed: r.failedClubs.length, ms: performance.now() - t0 }));
    }
  });
  process.send!({ type: 'ready', port: daemon.address().port, fingerprint: identity.fingerprint });
}

if (process.send) void main();
