import { html, type SafeHtml } from './html.js';
import { t, type Lang } from './i18n.js';

/**
 * The page frame: language attribute, a skip link, the navigation the user's rights allow and
 * the logout form (POST with the session's CSRF token). No script anywhere; one stylesheet.
 */
export interface Nav {
  readonly user: string;
  readonly club: string;
  readonly csrf: string;
  readonly persons: boolean;
  readonly changeLog: boolean;
  readonly users: boolean;
  /** Club administrators: the backup passphrase and addresses page. */
  readonly backup: boolean;
  /** While a password change is due, only that page and logout are offered. */
  readonly mustChange: boolean;
}

export function page(lang: Lang, title: string, body: SafeHtml, nav?: Nav): string {
  const links = nav
    ? html`<nav aria-label="${lang === 'de' ? 'Hauptnavigation' : 'Main navigation'}"><ul>
${nav.mustChange ? html`<li><a href="/password">${t(lang, 'changePassword')}</a></li>` : html`${nav.persons ? html`<li><a href="/persons">${t(lang, 'persons')}</a></li>` : ''}
${nav.changeLog ? html`<li><a href="/log">${t(lang, 'changeLog')}</a></li>` : ''}
<li><a href="/me">${t(lang, 'myRecord')}</a></li>
${nav.users ? html`<li><a href="/admin/users">${t(lang, 'users')}</a></li>` : ''}
${nav.backup ? html`<li><a href="/admin/backup">${t(lang, 'backupPassphrase')}</a></li>` : ''}
<li><a href="/password">${t(lang, 'changePassword')}</a></li>`}
</ul>
<p class="who">${t(lang, 'loggedIn')} <strong>${nav.user}</strong> (${nav.club})</p>
<form method="post" action="/logout" class="inline"><input type="hidden" name="_csrf" value="${nav.csrf}"><button type="submit" id="logout">${t(lang, 'logout')}</button></form>
</nav>`
    : '';
  return html`<!doctype html>
<html lang="${lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>${title} – ${t(lang, 'title')}</title>
<link rel="stylesheet" href="/static/app.css">
</head>
<body>
<a class="skip" href="#main">${t(lang, 'skip')}</a>
<header><p class="brand">${t(lang, 'title')}</p>${links}</header>
<main id="main">
<h1>${title}</h1>
${body}
</main>
</body>
</html>
`.value;
}

/** A message box; `kind` is written out as a word too, so it reads without colour. */
export function notice(kind: 'error' | 'ok', text: string): SafeHtml {
  return html`<p class="notice ${kind}" role="${kind === 'error' ? 'alert' : 'status'}"><strong>${kind === 'error' ? '⚠ ' : '✓ '}</strong>${text}</p>`;
}

/** The stylesheet (served from /static/app.css; the CSP allows styles from 'self' only). */
export const STYLESHEET = `body{font-family:system-ui,sans-serif;margin:0;line-height:1.5;color:#111;background:#fff}
header{background:#1d3557;color:#fff;padding:.5rem 1rem}header a,header .who{color:#fff}
header ul{list-style:none;display:flex;flex-wrap:wrap;gap:1rem;padding:0;margin:.25rem 0}
.brand{font-weight:bold;margin:0}.inline{display:inline}
main{padding:1rem;max-width:70rem}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;color:#000;padding:.5rem}
a:focus,button:focus,input:focus,select:focus{outline:3px solid #e76f51;outline-offset:2px}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #999;padding:.25rem .5rem;text-align:left;vertical-align:top}
label{display:block;margin-top:.5rem;font-weight:600}input,select{font-size:1rem;padding:.25rem}
button{font-size:1rem;margin-top:.75rem;padding:.3rem .8rem}
.notice{border:2px solid;padding:.5rem}.notice.error{border-color:#b00020}.notice.ok{border-color:#2a9d8f}
.filters{display:flex;flex-wrap:wrap;gap:0 1rem;align-items:flex-end}
pre{white-space:pre-wrap;word-break:break-word;margin:0}
`;
