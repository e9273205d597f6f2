/**
 * Writes docs/man/commusic.1, commusicctl.1 and commusicd.1 from the command trees:
 * `npm run docs:man`. manPages() is what tests/cli-docs.test.ts compares the committed files with.
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { basename, dirname, join } from 'node:path';
import { buildProgram } from '../bin/commusic-program.js';
import { program as ctlProgram } from '../bin/ctl-program.js';
import { program as daemonProgram } from '../bin/daemon-program.js';
import { manPage } from '../bin/cli-docs.js';
import { packageVersion } from '../bin/cli-util.js';

const ENV: Record<string, [string, string][]> = {
  commusic: [
    ['COMMUSIC_SERVER', 'server address HOST:PORT (--server)'],
    ['COMMUSIC_FINGERPRINT', 'expected server key fingerprint (--fingerprint)'],
    ['COMMUSIC_CLUB', 'club to log in to (--club)'],
    ['COMMUSIC_USER', 'user name (--user)'],
    ['COMMUSIC_TICKET', '1: keep and use a session ticket (--ticket)'],
    ['COMMUSIC_TICKET_DIR', 'folder of the ticket files (else $XDG_RUNTIME_DIR/commusic, else ~/.commusic/tickets)'],
  ],
  commusicctl: [
    ['COMMUSIC_DATA', 'data folder of the daemon (--data)'],
    ['COMMUSIC_CONFIG', 'daemon configuration file used when no daemon runs'],
  ],
  commusicd: [['COMMUSIC_CONFIG', 'configuration file (--config)']],
};

/** The man pages by file name (commusic.1, ...). */
export function manPages(): Record<string, string> {
  const version = packageVersion();
  const out: Record<string, string> = {};
  for (const p of [buildProgram(), ctlProgram, daemonProgram]) out[`${p.name()}.1`] = manPage(p, { version, environment: ENV[p.name()] ?? [] });
  return out;
}

if (basename(fileURLToPath(import.meta.url)) === basename(process.argv[1] ?? '')) {
  const dir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs', 'man');
  for (const [f, text] of Object.entries(manPages())) {
    writeFileSync(join(dir, f), text);
    process.stdout.write(`wrote ${join(dir, f)}\n`);
  }
}
