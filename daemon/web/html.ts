/**
 * Server-rendered HTML with automatic escaping: every value put into an `html` template is
 * escaped (& < > " ' and `) unless it is itself the result of `html`. Attributes are always
 * written quoted, so escaping suffices in both text and attribute positions (OWASP XSS
 * Prevention Cheat Sheet, rules 1 and 2). There is no other way to produce markup in daemon/web/.
 */
const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;', '`': '&#96;' };

/** Markup that is already safe: produced by `html` only. */
export class SafeHtml {
  constructor(readonly value: string) {}
  toString(): string {
    return this.value;
  }
}

/** Escape text for an HTML text node or a quoted attribute value. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"'`]/g, (c) => ESCAPES[c]!);
}

function piece(v: unknown): string {
  if (v instanceof SafeHtml) return v.value;
  if (Array.isArray(v)) return v.map(piece).join('');
  if (v === null || v === undefined || v === false) return '';
  return escapeHtml(String(v));
}

/** Tagged template: `html\`<td>${name}</td>\`` escapes `name`; nested `html` results and arrays of them pass. */
export function html(strings: TemplateStringsArray, ...values: unknown[]): SafeHtml {
  let out = strings[0]!;
  for (let i = 0; i < values.length; i++) out += piece(values[i]) + strings[i + 1]!;
  return new SafeHtml(out);
}
