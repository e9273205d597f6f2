import { z } from 'zod';
import type { BanTable } from '../storage/ban-store.js';
import { bansAdd, bansCheck, bansList, bansRemove, exemptAdd, exemptList, exemptRemove } from './ban-ops.js';
import { OperationRegistry } from './operations.js';

/**
 * Every operator operation, registered once. The context gives access to what an operation
 * needs; online it holds the running daemon's live objects, offline commusicctl opens the data
 * folder lazily, so a command opens only what it touches.
 */
export interface OpsContext {
  readonly dataDir: string;
  bans(): BanTable;
}

const address = z.string().min(1).max(64);

export function buildOperations<C extends OpsContext>(registry = new OperationRegistry<C>()): OperationRegistry<C> {
  registry
    .register({ name: 'bans.list', schema: z.object({}).strict(), run: (c) => bansList({ table: c.bans() }) })
    .register({
      name: 'bans.add',
      schema: z.object({ address, duration: z.string().min(1).max(16), reason: z.string().min(1).max(200) }).strict(),
      run: (c, a) => bansAdd({ table: c.bans() }, a),
    })
    .register({ name: 'bans.remove', schema: z.object({ address }).strict(), run: (c, a) => bansRemove({ table: c.bans() }, a) })
    .register({ name: 'bans.check', schema: z.object({ address }).strict(), run: (c, a) => bansCheck({ table: c.bans() }, a) })
    .register({ name: 'bans.exempt.list', schema: z.object({}).strict(), run: (c) => exemptList({ table: c.bans() }) })
    .register({
      name: 'bans.exempt.add',
      schema: z.object({ address, note: z.string().max(200).optional() }).strict(),
      run: (c, a) => exemptAdd({ table: c.bans() }, a),
    })
    .register({ name: 'bans.exempt.remove', schema: z.object({ address }).strict(), run: (c, a) => exemptRemove({ table: c.bans() }, a) });
  return registry;
}
