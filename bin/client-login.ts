/** `commusic`'s login against a server list (PROTOCOL.md 6.5): redirects and retries. */
import type { Connection } from '../client/connection.js';
import { movedTarget } from '../client/cluster-client.js';
import { RetryRule, showsProgress } from '../client/retry-rule.js';

/**
 * auth.login on `conn()`, following MOVED to the server that serves the club (4 hops at once) and
 * retrying across a takeover or a drain (UNAVAILABLE, SHUTTING_DOWN, a redirect circle) by the
 * SDK's retry rule (client/retry-rule.ts). `reconnect(to)` closes the connection and opens one to
 * `to` (undefined: the server list again); without it only the first answer counts. Nothing is
 * checked or counted for a login answered with one of these: the ownership gate runs before the
 * password check. Rejects with the last error when the rule gives up.
 */
export async function loginWithRetries(
  conn: () => Connection,
  p: { club: string; user: string; password: string },
  reconnect: ((to: { host: string; port: number } | undefined) => Promise<Connection>) | undefined,
): Promise<{ payload: unknown }> {
  const rule = new RetryRule(Date.now());
  let lastOwner: string | undefined;
  for (let hops = 0; ; hops++) {
    try {
      return await conn().request('auth.login', p);
    } catch (e) {
      const target = movedTarget(e);
      const owner = target && `${target.host}:${target.port}`;
      const code = (e as { code?: string }).code;
      if (!reconnect) throw e;
      if (target && hops < 4) {
        if (showsProgress(e, lastOwner, owner)) rule.progress(Date.now());
        lastOwner = owner;
        await reconnect(target);
        continue;
      }
      if (!(target || code === 'UNAVAILABLE' || code === 'SHUTTING_DOWN')) throw e;
      const pause = rule.next(Date.now(), showsProgress(e, lastOwner, owner));
      if (pause === undefined) throw e;
      await new Promise((r) => setTimeout(r, pause));
      hops = 0;
      if (target) lastOwner = owner;
      // a draining server closes: start again from the server list
      if (target || code === 'SHUTTING_DOWN') await reconnect(target);
    }
  }
}
