// Child process for tests/group-commit.test.ts (not a test file itself): a daemon with the club
// commands on 127.0.0.1:0 over an existing data folder, killed with SIGKILL by its parent while
// clients write. Prints `ready PORT FINGERPRINT SPKI` (SPKI in base64: its
// change-log heads are signed with this process's key), then the club store's group-commit counters
// every 20 ms (`stats {...}`).
// Usage: node group-crash-child.js <dataDir> <clubId>
import { configSchema } from '../daemon/main/config.js';
import { registerClubCommands } from '../daemon/club/club-commands.js';
import { Dispatcher } from '../daemon/edge/dispatcher.js';
import { nullLogger } from '../daemon/common/log.js';
import { Daemon } from '../daemon/edge/server.js';
import { ViolationBus } from '../daemon/bans/violations.js';
import { openStorage } from '../storage/server/storage.js';
import { testIdentity } from './helpers/pair.js';

const [dataDir, clubId] = process.argv.slice(2) as [string, string];
const storage = await openStorage({ dataDir });
const identity = testIdentity();
const bus = new ViolationBus();
const dispatcher = new Dispatcher();
registerClubCommands(dispatcher, { storage, violations: bus, identity, passwordLog2N: 10 });
const daemon = await Daemon.start({ config: configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'error' }), identity, logger: nullLogger(), violations: bus, dispatcher });
process.stdout.write(`ready ${daemon.address().port} ${identity.fingerprint} ${Buffer.from(identity.spki).toString('base64')}\n`);
setInterval(() => {
  try {
    process.stdout.write(`stats ${JSON.stringify(storage.openClub(clubId).writes.stats)}\n`);
  } catch {
    // the store is being opened or closed right now; the next tick reports
  }
}, 20);
