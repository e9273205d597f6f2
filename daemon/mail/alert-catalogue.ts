/**
 * Every alert mail the code can send, with what it means and the command that helps. The mailer
 * (daemon/mail/mailer.ts) appends both to every mail; docs/MONITORING.md "Alert mails" has one row
 * per kind, and tests/alert-catalogue.test.ts checks the table, the catalogue and the code
 * agree. A new alert needs an entry here (the Alert type requires its kind).
 */
export const ALERT_CATALOGUE = {
  'monitor-outage': {
    meaning: 'the availability monitor could not handshake and ping the server for the configured number of probes in a row; clients of that server cannot work',
    command: 'from the other probe site compare; on the server: systemctl status commusicd; journalctl -u commusicd; commusicctl status; a banned monitor: commusicctl bans check <monitor ip>',
  },
  'monitor-recovery': {
    meaning: 'the first probe after an outage succeeded; the server answers again',
    command: 'journalctl -u commusicd --since "<failing since>" to find the cause',
  },
  ban: {
    meaning: 'an address broke the rules (not our client, or beyond its rights) and is banned until the time given',
    command: 'commusicctl bans check <address>; a member with a misconfigured client: commusicctl bans remove <address>',
  },
  'key-file': {
    meaning: 'a key file (master key, identity key, or a rollover\'s next or previous identity key) or its folder changed while the daemon ran',
    command: 'ls -l <data>/keys; commusicctl status; if the key may have been copied: commusicctl keys rotate-master',
  },
  'backup-destination-down': {
    meaning: 'a backup destination refused or failed during the nightly run; the club archives listed are missing there and are retried automatically',
    command: 'commusicctl backup list (missing copies); check the destination (disk, SFTP host, credentials); commusicctl backup run --all once it is back',
  },
  'backup-destination-still-down': {
    meaning: 'the retry after backups.retryAfter found the destination still down; archives are still missing there',
    command: 'commusicctl backup list; fix the destination; commusicctl backup run --all',
  },
  'backup-clubs-failed': {
    meaning: 'the archive of one or more clubs could not be made (store error, disk full); those clubs have no new backup anywhere',
    command: 'journalctl -u commusicd (event backup); df -h <data>; commusicctl backup run --club <id>',
  },
  'backup-mail-too-large': {
    meaning: "a club's nightly archive is above backups.mail.maxBytes, so it was not mailed; the club got a notice, its data is backed up as usual",
    command: 'nothing urgent; raise backups.mail.maxBytes if the mail relay allows larger mails (commusicd --check-config, then systemctl reload commusicd)',
  },
} as const satisfies Record<string, { meaning: string; command: string }>;

export type AlertKind = keyof typeof ALERT_CATALOGUE;

/** The two lines every alert mail ends its alert with. */
export function remedyLines(kind: AlertKind): string[] {
  const e = ALERT_CATALOGUE[kind];
  return [`What it means: ${e.meaning}.`, `What helps: ${e.command}`];
}
