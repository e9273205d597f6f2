import type { z } from 'zod';
import { boundedText, CommandError } from './command-errors.js';
import { findMapConfusion, isCborMap } from './payload-shape.js';

/**
 * The command registry. Each command declares its payload schema, whether it takes an upload
 * stream, and a handler. Unknown commands, payloads that fail the schema, and streams where
 * none is expected are refused here, before any handler runs.
 */
export interface ConnectionInfo {
  readonly id: number;
  readonly ip: string;
  readonly port: number;
  /** Where the request came in: absent for the client protocol, 'web' for the web application. */
  readonly source?: 'web';
}

export interface CommandContext {
  readonly conn: ConnectionInfo;
  readonly signal: AbortSignal;
  /** Present when the command declared `upload: true`: the client's chunks, with flow control. */
  readonly upload?: AsyncIterable<Uint8Array>;
  /** Mutable per-connection state (the authenticated user, later). */
  readonly session: Map<string, unknown>;
  /** Tell the edge a user logged in: the connection leaves the pre-login limits and deadline. */
  authenticated?(): void;
  /**
   * The session's exporter value (PROTOCOL.md 4), to bind an authentication to this session
   * (the peer channel, PROTOCOL.md 6.6); absent where there is none (the web application).
   */
  channelBinding?(): Uint8Array | undefined;
}

export interface CommandResult {
  payload: unknown;
  /** A download stream sent after the response, pulled only as the client grants credit. */
  download?: AsyncIterable<Uint8Array>;
}

export interface CommandSpec<S extends z.ZodTypeAny = z.ZodTypeAny> {
  readonly name: string;
  readonly schema: S;
  readonly upload?: boolean;
  /**
   * Optional shortcut for the common payloads of a hot command: returns `{ data }` only when
   * the payload certainly passes the schema and `data` is exactly what the schema's parse
   * returns; undefined sends the payload through the schema as usual.
   */
  readonly quickParse?: (payload: unknown) => { data: z.infer<S> } | undefined;
  /**
   * A plain result is answered in the same turn without a promise (the channel's hot commands:
   * ping); a handler that fails must reject, never throw synchronously (that ends the connection).
   */
  handler(payload: z.infer<S>, ctx: CommandContext): Promise<CommandResult> | CommandResult;
}

/** Called once when a connection ends, with its per-connection session state. */
export type CloseListener = (conn: ConnectionInfo, session: Map<string, unknown>) => void;

export class Dispatcher {
  private readonly commands = new Map<string, CommandSpec>();
  private readonly closeListeners: CloseListener[] = [];

  /** Lets a command module clean up per-connection state (e.g. log the logout of a session). */
  onConnectionClosed(listener: CloseListener): void {
    this.closeListeners.push(listener);
  }

  connectionClosed(conn: ConnectionInfo, session: Map<string, unknown>): void {
    if (session.size === 0) return;
    for (const l of this.closeListeners) {
      try {
        l(conn, session);
      } catch {
        // One module's failure must not keep the others from cleaning up.
      }
    }
  }

  register<S extends z.ZodTypeAny>(spec: CommandSpec<S>): void {
    if (this.commands.has(spec.name)) throw new Error(`command ${spec.name} registered twice`);
    this.commands.set(spec.name, spec as unknown as CommandSpec);
  }

  /** Whether a command of this name is registered. */
  has(name: string): boolean {
    return this.commands.has(name);
  }

  /** The registered declaration of a command (for the API description), or undefined. */
  spec(name: string): CommandSpec | undefined {
    return this.commands.get(name);
  }

  names(): string[] {
    return [...this.commands.keys()].sort();
  }

  /**
   * Looks up and validates; throws CommandError for the client. Every command's payload is a
   * CBOR map (PROTOCOL.md section 7), checked before any schema runs, and so is every value
   * the schema wants as a map (findMapConfusion). BAD_REQUEST texts are short: one issue, at
   * most MAX_LISTED_KEYS unknown keys, clipped (boundedText).
   */
  prepare(command: string, payload: unknown, hasUpload: boolean): { spec: CommandSpec; payload: unknown } {
    const spec = this.specFor(command, hasUpload);
    return { spec, payload: this.validate(spec, payload) };
  }

  /**
   * prepare()'s first half: the command's declaration, if it exists and `hasUpload` matches
   * its `upload`; throws CommandError UNKNOWN_COMMAND, UNEXPECTED_STREAM or STREAM_REQUIRED.
   */
  specFor(command: string, hasUpload: boolean): CommandSpec {
    const spec = this.commands.get(command);
    if (!spec) throw new CommandError('UNKNOWN_COMMAND', `unknown command "${boundedText(command, MAX_COMMAND_IN_TEXT)}"`);
    if (hasUpload && !spec.upload) throw new CommandError('UNEXPECTED_STREAM', `${spec.name} takes no upload stream`);
    if (!hasUpload && spec.upload) throw new CommandError('STREAM_REQUIRED', `${spec.name} needs an upload stream`);
    return spec;
  }

  /**
   * prepare()'s second half: the payload for `spec`'s handler (schema-checked, request key
   * kept aside); throws CommandError BAD_REQUEST.
   */
  validate(spec: CommandSpec, payload: unknown): unknown {
    if (!isCborMap(payload)) throw new CommandError('BAD_REQUEST', 'invalid payload: the payload must be a map');
    // Most payloads carry no request key: no object is made for them.
    const taken = Object.prototype.hasOwnProperty.call(payload, REQUEST_KEY_FIELD) ? takeRequestKey(payload) : undefined;
    const body = taken ? taken.body : payload;
    const rk = taken?.rk;
    const quick = spec.quickParse?.(body);
    if (quick) return withRequestKey(quick.data, rk);
    const confused = findMapConfusion(spec.schema, body);
    if (confused !== undefined) throw new CommandError('BAD_REQUEST', boundedText(`invalid payload at ${confused}: expected a map`));
    const parsed = spec.schema.safeParse(body);
    if (!parsed.success) throw new CommandError('BAD_REQUEST', describeIssue(parsed.error.issues[0]!));
    return withRequestKey(parsed.data, rk);
  }

  /**
   * Replace every registered handler by `wrap(spec)` (the cluster's ownership and output gates,
   * daemon/cluster-gate.ts). Call once, after every command is registered.
   */
  wrapAll(wrap: (spec: CommandSpec) => CommandSpec['handler']): void {
    for (const [name, spec] of this.commands) this.commands.set(name, { ...spec, handler: wrap(spec) });
  }
}

/**
 * Request keys (PROTOCOL.md "Request keys"): any request payload may carry `rk`, 16 to 64
 * characters of base64url, naming the request so that a retry after a lost answer is applied
 * once. It is taken out before the schema check and kept beside the parsed payload.
 */
export const REQUEST_KEY_FIELD = 'rk';
const REQUEST_KEY = /^[A-Za-z0-9_-]{16,64}$/;
const requestKeys = new WeakMap<object, string>();

function takeRequestKey(payload: Record<string, unknown>): { body: Record<string, unknown>; rk: string | undefined } {
  const { [REQUEST_KEY_FIELD]: rk, ...body } = payload;
  if (typeof rk !== 'string' || !REQUEST_KEY.test(rk)) throw new CommandError('BAD_REQUEST', 'invalid payload at rk: a request key is 16 to 64 characters of base64url');
  return { body, rk };
}

function withRequestKey(parsed: unknown, rk: string | undefined): unknown {
  if (rk !== undefined && typeof parsed === 'object' && parsed !== null) requestKeys.set(parsed, rk);
  return parsed;
}

/** The request key that came with a prepared payload, if any. */
export function requestKeyOf(payload: unknown): string | undefined {
  return typeof payload === 'object' && payload !== null ? requestKeys.get(payload) : undefined;
}

const MAX_COMMAND_IN_TEXT = 64;
const MAX_LISTED_KEYS = 3;
const MAX_KEY_IN_TEXT = 32;
const MAX_PATH_IN_TEXT = 80;

/** One zod issue as a short sentence: the path, then the message; unknown keys listed briefly. */
export function describeIssue(issue: z.ZodIssue): string {
  const path = boundedText(issue.path.join('.') || '(root)', MAX_PATH_IN_TEXT);
  if (issue.code === 'unrecognized_keys') {
    const keys = issue.keys.slice(0, MAX_LISTED_KEYS).map((k) => JSON.stringify(boundedText(k, MAX_KEY_IN_TEXT)));
    const more = issue.keys.length > MAX_LISTED_KEYS ? ` and ${issue.keys.length - MAX_LISTED_KEYS} more` : '';
    return boundedText(`invalid payload at ${path}: unknown field${issue.keys.length > 1 ? 's' : ''} ${keys.join(', ')}${more}`);
  }
  return boundedText(`invalid payload at ${path}: ${issue.message}`);
}
