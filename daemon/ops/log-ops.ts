import { z } from 'zod';
import { keyRingVerifier, trustedIdentityKeys } from '../../crypto/identity-keyring.js';
import { queryAuditLog, verifyAuditLog, MAX_QUERY_LIMIT, type AuditVerifier } from '../../storage/club/audit-log.js';
import { dataPaths } from '../main/config.js';
import { OperationError, type OperationRegistry } from './operations.js';
import type { OpsContext } from './operations.js';

/**
 * Support's view of a club's change log: `log.show` (filters by time, user, action, entity;
 * paginated by sequence number) and `log.verify` (hash chain, signed heads, and the anchors kept
 * in server.db outside the club store; names the first missing or altered entry; public key only). Both run on the daemon's open store through the control socket, or offline on the
 * data folder (commusicctl log show|verify). Reading the log is itself not logged in the club's
 * log: the operator's actions are in the daemon's own log.
 */
const clubId = z.string().min(1).max(64).regex(/^[a-z0-9][a-z0-9-]{0,63}$/, 'not a club id');

/**
 * Verifies head and anchor signatures with the public identity keys of this data folder: the
 * current one (`keys/identity.pub`) and those of identity key rollovers (next, previous, and the
 * retired keys of `keys/identity-rotations.json`; crypto/identity-keyring.ts trustedIdentityKeys).
 * No private key is loaded, so whoever verifies cannot re-sign.
 */
export function identityVerifier(dataDir: string): AuditVerifier | undefined {
  const keys = trustedIdentityKeys(dataPaths(dataDir).identityKey);
  return keys.length > 0 ? keyRingVerifier(keys) : undefined;
}

export function registerLogOps<C extends OpsContext>(registry: OperationRegistry<C>): OperationRegistry<C> {
  return registry
    .register({
      name: 'log.show',
      schema: z
        .object({
          club: clubId,
          since: z.string().max(40).optional(),
          until: z.string().max(40).optional(),
          user: z.string().max(64).optional(),
          action: z.string().max(40).optional(),
          entity: z.string().max(40).optional(),
          afterSeq: z.number().int().min(0).optional(),
          limit: z.number().int().min(1).max(MAX_QUERY_LIMIT).optional(),
        })
        .strict(),
      run: async (c, a) => {
        for (const t of [a.since, a.until]) if (t !== undefined && Number.isNaN(Date.parse(t))) throw new OperationError('BAD_ARGUMENTS', `"${t}" is not a date or ISO time`);
        const st = await c.storage();
        const db = st.openClub(a.club, { allowSuspended: true }).db;
        return queryAuditLog(db, {
          ...(a.since !== undefined ? { from: a.since } : {}),
          ...(a.until !== undefined ? { to: a.until } : {}),
          ...(a.user !== undefined ? { user: a.user } : {}),
          ...(a.action !== undefined ? { action: a.action } : {}),
          ...(a.entity !== undefined ? { entity: a.entity } : {}),
          ...(a.afterSeq !== undefined ? { afterSeq: a.afterSeq } : {}),
          limit: a.limit ?? MAX_QUERY_LIMIT,
        });
      },
    })
    .register({
      name: 'log.verify',
      schema: z.object({ club: clubId }).strict(),
      run: async (c, a) => {
        const st = await c.storage();
        const db = st.openClub(a.club, { allowSuspended: true }).db;
        return { club: a.club, ...verifyAuditLog(db, a.club, identityVerifier(c.dataDir), st.listAnchors(a.club)) };
      },
    });
}
