import type { BanEntry, BanViolation } from '../../storage/bans/ban-store.js';
import type { BanEngine } from './ban-engine.js';
import type { Logger } from '../common/log.js';
import type { Alert, AlertMailer } from '../mail/mailer.js';

/** Violations listed per ban alert; the count covers all of them. */
const MAX_LISTED_VIOLATIONS = 10;

/** The mail for one ban: the address, until when, why, and the violations behind it. */
export function banAlert(ban: BanEntry, violations: readonly BanViolation[]): Alert {
  const lines = [
    `Address:  ${ban.address}`,
    `Until:    ${new Date(ban.expires).toISOString()}`,
    `Reason:   ${ban.reason}`,
    `Source:   ${ban.source}${ban.level > 0 ? `, offender level ${ban.level}` : ''}`,
    `Violations (${violations.length}):`,
  ];
  for (const v of violations.slice(0, MAX_LISTED_VIOLATIONS)) {
    const who = [
      v.user !== undefined ? `user=${v.user}` : '',
      v.club !== undefined ? `club=${v.club}` : '',
      v.command !== undefined ? `command=${v.command}` : '',
      v.right !== undefined ? `right=${v.right}` : '',
    ].filter(Boolean);
    lines.push(`  ${new Date(v.time).toISOString()} ${v.kind}: ${v.detail}${who.length ? ` (${who.join(' ')})` : ''}`);
  }
  if (violations.length > MAX_LISTED_VIOLATIONS) {
    lines.push(`  ... and ${violations.length - MAX_LISTED_VIOLATIONS} more (security log)`);
  }
  return {
    group: 'ban',
    kind: 'ban',
    severity: 'warning',
    subject: `unauthorised access: banned ${ban.address} (${ban.reason.split(':')[0]})`,
    lines,
    sources: [ban.address],
    violations: violations.length,
    time: ban.created,
  };
}

/**
 * bus -> engine -> table is the engine's job; this adds engine -> mailer. Returns the
 * unsubscribe function. A mailer failure is logged, never thrown into the engine.
 */
export function wireBanAlerts(engine: BanEngine, mailer: AlertMailer, logger?: Logger): () => void {
  return engine.onBan((ban, violations) => {
    mailer.alert(banAlert(ban, violations)).catch((err: unknown) => {
      logger?.error('ban alert could not be queued', {
        event: 'mail-error',
        address: ban.address,
        code: (err as { code?: string }).code ?? 'ERR',
      });
    });
  });
}
