/**
 * Composing an alert mail: one alert becomes a mail of its own, several of a group a digest that
 * names every source and sums the violations; untrusted text is neutralised line by line and
 * each kind's meaning and remedy from the alert catalogue closes the body.
 */
import { remedyLines } from './alert-catalogue.js';
import { neutralise } from '../common/neutralise.js';
import { newOutboxId, type OutboxMessage } from './outbox.js';
import { Alert, MailerSettings, SEVERITY_RANK, Severity, iso } from './mail-config.js';

/**
 * The outbox message for `alerts` of `group` (one: a mail of its own; several: a digest), at
 * `now` (ms), from `server` (the name in subjects and bodies), within settings.maxLinesPerMail.
 */
export function composeAlertMail(server: string, settings: MailerSettings, group: string, alerts: readonly (Alert & { time: number })[], now: number): OutboxMessage {
  group = neutralise(group);
  const id = newOutboxId(now);
  const severity = alerts.reduce<Severity>(
    (s, a) => (SEVERITY_RANK[a.severity] > SEVERITY_RANK[s] ? a.severity : s),
    'info',
  );
  const sources = new Set<string>();
  let violations = 0;
  for (const a of alerts) {
    for (const s of a.sources ?? []) sources.add(s);
    violations += a.violations ?? 0;
  }
  const tag = `[ComMusic ${server}] ${severity.toUpperCase()}`;
  const body: string[] = [];
  // Subjects, lines and sources carry untrusted text (user names, details): each becomes one
  // line with its control characters and bidi overrides escaped, so none can forge lines.
  alerts = alerts.map((a) => ({ ...a, subject: neutralise(a.subject), lines: a.lines.map(neutralise), ...(a.sources ? { sources: a.sources.map(neutralise) } : {}) }));
  for (const s of [...sources]) {
    sources.delete(s);
    sources.add(neutralise(s));
  }
  let subject: string;
  if (alerts.length === 1) {
    const a = alerts[0]!;
    subject = `${tag}: ${a.subject}`;
    body.push(a.subject, '', `Time:     ${iso(a.time)}`, `Server:   ${server}`, `Group:    ${group}`);
    if (sources.size > 0) body.push(`Sources:  ${[...sources].join(', ')}`);
    if (a.violations !== undefined) body.push(`Violations: ${a.violations}`);
    body.push('', ...a.lines);
  } else {
    const first = alerts[0]!.time;
    const counts = [`${alerts.length} alerts`];
    if (sources.size > 0) counts.push(`${sources.size} sources`);
    if (violations > 0) counts.push(`${violations} violations`);
    subject = `${tag}: ${group} digest, ${counts.join(', ')} since ${iso(first)}`;
    body.push(
      `${alerts.length} ${group} alerts between ${iso(first)} and ${iso(alerts[alerts.length - 1]!.time)}.`,
      `Server:   ${server}`,
    );
    if (violations > 0) body.push(`Violations: ${violations}`);
    if (sources.size > 0) {
      body.push('', `Sources (${sources.size}):`, ...[...sources].sort().map((s) => `  ${s}`));
    }
    body.push('');
    let used = 0;
    let omitted = 0;
    for (const a of alerts) {
      const chunk = [`- ${iso(a.time)} ${a.subject}`, ...a.lines.map((l) => `    ${l}`)];
      if (used + chunk.length > settings.maxLinesPerMail) {
        omitted += chunk.length;
        continue;
      }
      body.push(...chunk);
      used += chunk.length;
    }
    if (omitted > 0) body.push('', `(${omitted} more lines omitted; the security log has them all)`);
  }
  for (const kind of [...new Set(alerts.map((a) => a.kind))]) body.push('', ...remedyLines(kind));
  body.push('', '--', `ComMusic alert mailer on ${server}; the security log has the full record.`);
  return {
    id,
    createdAt: now,
    group,
    from: settings.from,
    to: settings.to.length > 0 ? settings.to : ['service-team@localhost'],
    subject,
    text: `${body.join('\n')}\n`,
    messageId: `<${id}.${group.replace(/[^A-Za-z0-9-]/g, '')}@commusic.alerts>`,
    attempts: 0,
  };
}
