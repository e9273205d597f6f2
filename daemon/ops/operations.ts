import type { z } from 'zod';
import type { BanTable } from '../../storage/bans/ban-store.js';
import type { Storage } from '../../storage/server/storage.js';
import type { ClusterNode } from '../../cluster/node.js';

/**
 * Operator operations: one registry used two ways. The running daemon serves them on its
 * control socket; `commusicctl` runs the very same functions on the data folder when no daemon
 * is running. So "online" and "offline" cannot drift apart.
 */
export class OperationError extends Error {
  override readonly name = 'OperationError';
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface Operation<S extends z.ZodTypeAny, C> {
  readonly name: string;
  readonly schema: S;
  run(ctx: C, args: z.infer<S>): Promise<unknown> | unknown;
}

export class OperationRegistry<C> {
  private readonly ops = new Map<string, Operation<z.ZodTypeAny, C>>();

  register<S extends z.ZodTypeAny>(op: Operation<S, C>): this {
    if (this.ops.has(op.name)) throw new Error(`operation ${op.name} registered twice`);
    this.ops.set(op.name, op as unknown as Operation<z.ZodTypeAny, C>);
    return this;
  }

  has(name: string): boolean {
    return this.ops.has(name);
  }

  async run(ctx: C, name: string, args: unknown): Promise<unknown> {
    const op = this.ops.get(name);
    if (!op) throw new OperationError('UNKNOWN_OPERATION', `unknown operation "${String(name).slice(0, 64)}"`);
    const parsed = op.schema.safeParse(args ?? {});
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      throw new OperationError('BAD_ARGUMENTS', `invalid arguments at ${issue.path.join('.') || '(root)'}: ${issue.message}`);
    }
    return op.run(ctx, parsed.data);
  }
}

/**
 * What an operator operation runs with. The context gives access to what an operation
 * needs; online it holds the running daemon's live objects, offline commusicctl opens the data
 * folder lazily, so a command opens only what it touches.
 */
export interface OpsContext {
  readonly dataDir: string;
  bans(): Promise<BanTable>;
  storage(): Promise<Storage>;
  /** Online: a manual ban was added; close the sessions its sources have open. */
  bansChanged?(): void;
  /** Online: runs the daemon's own key change without tripping the key-file watch. */
  expectKeyChange?<T>(fn: () => Promise<T>): Promise<T>;
  /** Online, on a cluster member: the daemon's cluster node (docs/CLUSTER.md). */
  cluster?(): ClusterNode | undefined;
  /** Online: the identity key files changed (a rollover step); reload them and tell the sessions. Returns how many sessions were told. */
  identityChanged?(): number;
}
