/** The `commusic` program's global options and the session it keeps across `batch` lines. */
import type { Connection } from '../client/connection.js';

export interface Globals {
  server?: string;
  fingerprint?: string;
  tofu?: boolean;
  knownServers?: string;
  bind?: string;
  timeout: string;
  club?: string;
  user?: string;
  passwordStdin?: boolean;
  passwordFile?: string;
  ticket?: boolean;
  maxProtocol: string;
}

/** A connection, logged in when the globals name a club and user; shared by `batch`. */
export interface SessionHolder {
  conn?: Connection;
  loggedIn?: boolean;
  shared?: boolean;
  /** The outer program's global options, for the programs built per batch line. */
  globals?: Globals;
  /** Connect to one server of the --server list (used to follow a redirect). */
  connectTo?: (s: { host: string; port: number }) => Promise<Connection>;
}

/** What a command module gets from the program: requests in the logged-in session, closing after the action. */
export interface ClientSession {
  /** Sends one request in the logged-in session; resolves to the response payload. */
  call(command: string, payload: unknown): Promise<any>;
  /** Every item of a list command, following `nextCursor`/`nextAfterSeq` (client/paging.ts); at most `max`. */
  callAll<T>(command: string, payload: Record<string, unknown>, key?: string, max?: number): Promise<T[]>;
  /** Every page of a list command, in order. */
  callPages(command: string, payload: Record<string, unknown>): AsyncGenerator<Record<string, unknown>>;
  /** Connects and logs in once per holder (see commusic-program.ts). */
  session(o?: { forPasswd?: boolean }): Promise<{ conn: Connection; password?: string }>;
  /** Wraps an action so the connection is closed (and the session logged out) afterwards. */
  act<A extends unknown[]>(fn: (...a: A) => Promise<void>): (...a: A) => Promise<void>;
}
