/**
 * Untrusted text (user and club names, reasons, violation details, values sent by a client)
 * made safe to show a person: in alert mail bodies and in every CLI's text output. One function
 * for the whole product, so a terminal or a mail reader never receives a raw control character,
 * escape sequence or bidirectional override from a client (OWASP: neutralise output for its
 * context; CWE-117 and CWE-150 log and terminal injection; Unicode TR 36 / CVE-2021-42574 for
 * bidi controls).
 *
 * What is escaped, visibly and reversibly readable: C0 controls (CR `\r`, LF `\n`, TAB `\t`,
 * ESC `\x1b`, ...), DEL and C1 controls (`\x7f`, `\x9b`), bidirectional controls and marks
 * (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069 as `\u202e`), line and paragraph
 * separators (U+2028, U+2029), zero-width and invisible format characters (U+200B-U+200D,
 * U+2060-U+2064, U+FEFF), and lone surrogates. A backslash stays as it is.
 */

// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

function escapeChar(c: string): string {
  const named = NAMED[c];
  if (named) return named;
  const code = c.charCodeAt(0);
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
}

/** One untrusted value as one line of safe text (newlines included are escaped). */
export function neutralise(text: string): string {
  return text.replace(UNSAFE, escapeChar);
}

/**
 * A whole block of text whose line structure is our own (the body of a mail, a table printed by
 * a CLI): every unsafe character except LF and TAB is escaped. Untrusted fields inside it must
 * already have gone through neutralise(), which escapes LF and TAB too.
 */
export function neutraliseBlock(text: string): string {
  return text.replace(UNSAFE, (c) => (c === '\n' || c === '\t' ? c : escapeChar(c)));
}

/** A copy of a JSON-like value with every string (keys included) neutralised. */
export function neutraliseDeep<T>(value: T): T {
  if (typeof value === 'string') return neutralise(value) as T;
  if (Array.isArray(value)) return value.map((v: unknown) => neutraliseDeep(v)) as T;
  if (value !== null && typeof value === 'object' && !(value instanceof Uint8Array) && !(value instanceof Date)) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) out[neutralise(k)] = neutraliseDeep(v);
    return out as T;
  }
  return value;
}

/**
 * JSON text that a terminal can show safely and any JSON parser reads back to the same value:
 * JSON.stringify already escapes C0 controls; this also writes the other unsafe characters
 * (C1 controls, bidi overrides, separators) as \uXXXX escapes.
 */
export function safeJson(value: unknown, replacer?: (key: string, value: unknown) => unknown, space?: number): string {
  return safeJsonText(JSON.stringify(value, replacer as never, space) ?? 'null');
}

/** JSON text (e.g. a log line) with the unsafe characters JSON.stringify leaves raw as \uXXXX. */
export function safeJsonText(text: string): string {
  // LF and TAB outside strings are indentation; inside strings JSON.stringify escaped them.
  return text.replace(UNSAFE, (c) => (c === '\n' || c === '\t' ? c : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`));
}
