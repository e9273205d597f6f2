/**
 * Which rights area (daemon/club/rights.ts) guards each entity and field of the data model
 * (storage/club/model.ts). The model's own coarse `area` tags predate the rights vocabulary of
 * issue 4; this table is the one the command handlers use.
 *
 * - An entity's rows are guarded by its entity area (persons -> persons, fees -> bank, ...).
 * - Some fields of persons carry their own area on top: contact data (address, phones,
 *   e-mails) -> contact; birth date and photo consent -> sensitive. Reading such a field needs
 *   read on its area too (otherwise it is left out of the answer; asking for it explicitly is
 *   refused); writing needs create/update on it, and erasing it (setting null) needs delete.
 * - Creating a person with such a field null or false (photoConsent: false) needs no right on
 *   its area: it records nothing.
 * - attendance.reason (a reason of absence, often health data) -> sensitive.
 * - Attendance rows need read on persons too: whether someone came is personal data of that
 *   person, so the rows are those in both the events scope and the persons scope.
 * - Documents are guarded per kind: documents.honour, documents.federationRegistration, ...
 */
import type { EntityName } from '../../storage/club/model.js';
import type { Area } from './rights.js';

export type DataEntity = Exclude<EntityName, 'users' | 'userRights' | 'auditLog'>;

export const ENTITY_AREA: Readonly<Record<DataEntity, Area | 'documents'>> = {
  persons: 'persons',
  memberships: 'memberships',
  honours: 'memberships',
  registers: 'registers',
  registerAssignments: 'registers',
  offices: 'offices',
  fees: 'bank',
  sepaMandates: 'bank',
  inventoryItems: 'inventory',
  inventoryLoans: 'inventory',
  sheetMusic: 'sheetMusic',
  sheetMusicLoans: 'sheetMusic',
  events: 'events',
  attendance: 'events',
  documents: 'documents',
};

export const FIELD_AREA: Readonly<Partial<Record<DataEntity, Readonly<Record<string, Area>>>>> = {
  persons: {
    street: 'contact',
    postalCode: 'contact',
    city: 'contact',
    country: 'contact',
    phones: 'contact',
    emails: 'contact',
    birthDate: 'sensitive',
    photoConsent: 'sensitive',
  },
  // A reason of absence is often health data (GDPR Art. 9): readable like a birth date, not
  // like the event (the member template shows it for the own record only).
  attendance: {
    reason: 'sensitive',
  },
};

export const DOCUMENT_KIND_AREA: Readonly<Record<string, Area>> = {
  honour: 'documents.honour',
  'federation-registration': 'documents.federationRegistration',
  reporter: 'documents.reporter',
  other: 'documents.other',
};

export function fieldArea(entity: DataEntity, field: string): Area | undefined {
  return FIELD_AREA[entity]?.[field];
}
