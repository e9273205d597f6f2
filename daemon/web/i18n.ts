/**
 * The web application's texts: German first (the clubs are German), English second. The language
 * is German unless the browser's first Accept-Language tag is English.
 */
export type Lang = 'de' | 'en';

const TEXTS = {
  title: ['ComMusic Vereinsverwaltung', 'ComMusic club administration'],
  login: ['Anmelden', 'Log in'],
  logout: ['Abmelden', 'Log out'],
  club: ['Verein (Kennung)', 'Club (id)'],
  user: ['Benutzername', 'User name'],
  password: ['Passwort', 'Password'],
  loginFailed: ['Verein, Benutzer oder Passwort unbekannt.', 'Unknown club, user or password.'],
  tryLater: ['Der Verein ist gerade nicht erreichbar. Bitte später erneut versuchen.', 'The club is not available right now. Please try again later.'],
  changePassword: ['Passwort ändern', 'Change password'],
  mustChange: ['Bitte wählen Sie vor dem ersten Arbeiten ein eigenes Passwort.', 'Please choose your own password before you continue.'],
  oldPassword: ['Bisheriges Passwort', 'Current password'],
  newPassword: ['Neues Passwort (mindestens 12 Zeichen)', 'New password (at least 12 characters)'],
  repeatPassword: ['Neues Passwort wiederholen', 'Repeat the new password'],
  passwordsDiffer: ['Die beiden neuen Passwörter stimmen nicht überein.', 'The two new passwords differ.'],
  wrongCurrent: ['Das bisherige Passwort ist falsch.', 'The current password is wrong.'],
  passwordChanged: ['Das Passwort wurde geändert.', 'The password was changed.'],
  persons: ['Personen', 'Persons'],
  person: ['Person', 'Person'],
  changeLog: ['Änderungsprotokoll', 'Change log'],
  myRecord: ['Meine Daten', 'My record'],
  users: ['Benutzer und Rechte', 'Users and rights'],
  noRight: ['Dafür fehlt Ihnen das Recht.', 'You lack the right for this.'],
  notFound: ['Nicht gefunden.', 'Not found.'],
  badRequest: ['Die Eingabe ist ungültig.', 'The input is invalid.'],
  csrf: ['Das Formular ist abgelaufen oder ungültig. Bitte erneut versuchen.', 'The form has expired or is invalid. Please try again.'],
  sessionEnded: ['Die Sitzung ist abgelaufen. Bitte erneut anmelden.', 'The session has ended. Please log in again.'],
  error: ['Ein Fehler ist aufgetreten.', 'An error occurred.'],
  next: ['Weiter', 'Next'],
  previous: ['Zurück', 'Previous'],
  none: ['Keine Einträge.', 'No entries.'],
  filter: ['Filtern', 'Filter'],
  from: ['Von (Zeitpunkt)', 'From (time)'],
  to: ['Bis (Zeitpunkt)', 'To (time)'],
  action: ['Aktion', 'Action'],
  entity: ['Bereich', 'Entity'],
  time: ['Zeit', 'Time'],
  details: ['Einzelheiten', 'Details'],
  hidden: ['(verborgen)', '(hidden)'],
  chainOk: ['Kette geprüft: unverändert', 'Chain verified: intact'],
  chainBad: ['Kette geprüft: VERÄNDERT ab Eintrag', 'Chain verified: ALTERED from entry'],
  signedUpTo: ['signiert bis Eintrag', 'signed up to entry'],
  entries: ['Einträge', 'entries'],
  export: ['Auskunft nach Art. 15 DSGVO herunterladen', 'Download the GDPR Art. 15 export'],
  exportHint: ['Eine Datei (JSON) mit allen Daten, die Ihre Rechte über Sie zeigen.', 'One file (JSON) with all data your rights show about you.'],
  noPerson: ['Ihr Benutzer ist mit keiner Person verknüpft.', 'Your user is not linked to a person.'],
  role: ['Rolle', 'Role'],
  registers: ['Register (Kennungen, durch Komma getrennt)', 'Registers (ids, comma-separated)'],
  admin: ['Administrator', 'Administrator'],
  disabled: ['gesperrt', 'disabled'],
  setRights: ['Rechte setzen', 'Set rights'],
  rightsSet: ['Die Rechte wurden gesetzt.', 'The rights were set.'],
  backupPassphrase: ['Sicherung: Passphrase und Adressen', 'Backup: passphrase and addresses'],
  backupSetAt: ['Eine Passphrase ist gesetzt seit', 'A passphrase is set since'],
  backupNotSet: ['Es ist noch keine Passphrase gesetzt: Sicherungen können nicht für den Verein verschlüsselt werden.', 'No passphrase is set yet: backups cannot be encrypted for the club.'],
  backupCurrent: ['Bisherige Passphrase', 'Current passphrase'],
  backupNew: ['Neue Passphrase (mindestens 12 Zeichen)', 'New passphrase (at least 12 characters)'],
  backupEmails: ['E-Mail-Adressen für die nächtliche Sicherung (durch Komma getrennt)', 'E-mail addresses for the nightly backup (comma-separated)'],
  backupSave: ['Speichern', 'Save'],
  backupSaved: ['Passphrase und Adressen wurden gespeichert.', 'The passphrase and addresses were saved.'],
  backupCurrentWrong: ['Die bisherige Passphrase ist falsch.', 'The current passphrase is wrong.'],
  loggedIn: ['Angemeldet als', 'Logged in as'],
  yes: ['ja', 'yes'],
  no: ['nein', 'no'],
  skip: ['Zum Inhalt springen', 'Skip to content'],
} as const;

export type TextKey = keyof typeof TEXTS;

/** The text for a key in a language. */
export function t(lang: Lang, key: TextKey): string {
  return TEXTS[key][lang === 'de' ? 0 : 1];
}

/** German unless the first Accept-Language tag is English (RFC 9110 section 12.5.4). */
export function pickLang(acceptLanguage: string | undefined): Lang {
  const first = (acceptLanguage ?? '').split(',')[0]?.trim().toLowerCase() ?? '';
  return first.startsWith('en') ? 'en' : 'de';
}
