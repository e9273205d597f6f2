/**
 * The club data model, declared once per entity. Tables and migrations (storage/club/schema.ts),
 * validation (`validatorFor`), and later commands, audit and rights are all derived from these
 * declarations; nothing else in the code base lists an entity's fields.
 *
 * Per field: its zod type (validation), its SQL storage class, required or optional, a maximum
 * length for text, a sensitivity tag (what the audit log redacts, what needs extra rights), an
 * optional reference to another entity, and the schema version that introduced it.
 * Per entity: the rights area it belongs to and how it is scoped to registers (orchestra
 * sections), so a right "read members of register Brass" can be checked row by row.
 */
import { z, type ZodTypeAny } from 'zod';

/** How sensitive a field is. `bank` and `special` (GDPR Art. 9-like) are never logged in clear. */
export type Sensitivity = 'internal' | 'personal' | 'contact' | 'special' | 'bank' | 'secret';

/** Rights areas: a user right grants a level on an area, optionally limited to one register. */
export const AREAS = ['members', 'registers', 'offices', 'honours', 'finance', 'inventory', 'sheetMusic', 'events', 'documents', 'admin', 'audit'] as const;
export type Area = (typeof AREAS)[number];

export type SqlType = 'TEXT' | 'INTEGER' | 'REAL' | 'BLOB';

export interface FieldDef {
  readonly zod: ZodTypeAny;
  readonly sql: SqlType;
  readonly required: boolean;
  readonly maxLength?: number;
  /** Plain text (f.text): any string of at most maxLength UTF-16 units (null where optional), no transform. */
  readonly plainText?: boolean;
  readonly enumValues?: readonly string[];
  readonly sensitivity: Sensitivity;
  /** Name of the referenced entity (foreign key to its `id`). */
  readonly ref?: EntityName;
  readonly unique?: boolean;
  readonly index?: boolean;
  /** Schema version that added this field (migrations add the column). */
  readonly since: number;
  readonly description?: string;
  /** Kept by the server for itself (a file name): never in a response, not filterable, not writable by a client. */
  readonly serverOnly?: boolean;
  /** Value a create takes when the field is left out (the column stays NOT NULL). */
  readonly default?: unknown;
}

/**
 * How rows map to registers for register-level rights:
 * - `none`: not register-scoped (a right on the area covers all rows);
 * - `column`: the row's own `registerId` (null means club-wide);
 * - `person`: through the row's `personId` and that person's register assignments.
 */
export type RegisterScope = { kind: 'none' } | { kind: 'column'; field: string } | { kind: 'person'; field: string };

export interface EntityDef {
  readonly name: EntityName;
  readonly table: string;
  readonly area: Area;
  readonly registerScope: RegisterScope;
  /** System entities (users, rights, audit) are not edited through the generic commands. */
  readonly system: boolean;
  readonly since: number;
  /** Primary key column (INTEGER, assigned by SQLite): `id`, or `seq` for the audit log. */
  readonly idColumn: string;
  readonly fields: Readonly<Record<string, FieldDef>>;
  readonly description: string;
  /**
   * Composite indexes beyond the one per filterable field that storage/club/schema.ts derives by
   * itself (issue 21): the columns in order, and the schema version that introduced it.
   */
  readonly indexes?: ReadonlyArray<{ readonly columns: readonly string[]; readonly since: number }>;
}

// ---- field builders ------------------------------------------------------------------------

interface Opt {
  sensitivity?: Sensitivity;
  optional?: boolean;
  since?: number;
  unique?: boolean;
  index?: boolean;
  description?: string;
}

function base(zod: ZodTypeAny, sql: SqlType, o: Opt, extra: Partial<FieldDef> = {}): FieldDef {
  return {
    zod: o.optional ? zod.nullable().optional() : zod,
    sql,
    required: !o.optional,
    sensitivity: o.sensitivity ?? 'internal',
    since: o.since ?? 1,
    ...(o.unique ? { unique: true } : {}),
    ...(o.index ? { index: true } : {}),
    ...(o.description ? { description: o.description } : {}),
    ...extra,
  };
}

const ISO_DATE = /^\d{4}-\d{2}-\d{2}$/;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2})?$/;

export const f = {
  text: (max: number, o: Opt = {}) => base(z.string().max(max), 'TEXT', o, { maxLength: max, plainText: true }),
  /** Non-empty text. */
  name: (max: number, o: Opt = {}) => base(z.string().trim().min(1).max(max), 'TEXT', o, { maxLength: max }),
  enumOf: <T extends [string, ...string[]]>(values: T, o: Opt = {}) => base(z.enum(values), 'TEXT', o, { enumValues: values }),
  date: (o: Opt = {}) => base(z.string().regex(ISO_DATE, 'expected YYYY-MM-DD'), 'TEXT', o, { maxLength: 10 }),
  dateTime: (o: Opt = {}) => base(z.string().regex(ISO_TIME, 'expected an ISO 8601 date-time'), 'TEXT', o, { maxLength: 40 }),
  int: (min: number, max: number, o: Opt = {}) => base(z.number().int().min(min).max(max), 'INTEGER', o),
  money: (o: Opt = {}) => base(z.number().int().min(-1e12).max(1e12).describe('cents'), 'INTEGER', o),
  /** A yes/no flag; left out on create it is `false` unless the declaration names another default. */
  bool: (o: Opt & { default?: boolean } = {}) => base(z.boolean().default(o.default ?? false), 'INTEGER', o, { default: o.default ?? false }),
  ref: (entity: EntityName, o: Opt = {}) => base(z.number().int().positive(), 'INTEGER', { index: true, ...o }, { ref: entity }),
  /** A JSON array of strings, e.g. several phone numbers. */
  list: (maxItems: number, maxLen: number, o: Opt = {}) => base(z.array(z.string().max(maxLen)).max(maxItems), 'TEXT', o, { maxLength: maxItems * (maxLen + 3) + 2 }),
  email: (o: Opt = {}) => base(z.string().email().max(254), 'TEXT', o, { maxLength: 254 }),
  iban: (o: Opt = {}) =>
    base(
      z.string().transform((s) => s.replace(/\s+/g, '').toUpperCase()).pipe(z.string().regex(/^[A-Z]{2}\d{2}[A-Z0-9]{11,30}$/, 'not an IBAN').refine(ibanChecksumOk, 'IBAN check digits are wrong')),
      'TEXT',
      { sensitivity: 'bank', ...o },
      { maxLength: 34 },
    ),
  sha256: (o: Opt = {}) => base(z.string().regex(/^[0-9a-f]{64}$/, 'lower-case hex, 64 characters'), 'TEXT', o, { maxLength: 64 }),
  blob: (maxLength: number, o: Opt = {}) => base(z.instanceof(Uint8Array), 'BLOB', o, { maxLength }),
  json: (max: number, o: Opt = {}) => base(z.unknown(), 'TEXT', o, { maxLength: max }),
};

/** ISO 13616 mod-97 check. */
export function ibanChecksumOk(iban: string): boolean {
  const s = iban.slice(4) + iban.slice(0, 4);
  let rem = 0;
  for (const ch of s) {
    const v = ch >= 'A' && ch <= 'Z' ? String(ch.charCodeAt(0) - 55) : ch;
    for (const d of v) rem = (rem * 10 + Number(d)) % 97;
  }
  return rem === 1;
}

// ---- entities ------------------------------------------------------------------------------

export const ENTITY_NAMES = [
  'persons', 'memberships', 'registers', 'registerAssignments', 'offices', 'honours', 'fees', 'sepaMandates',
  'inventoryItems', 'inventoryLoans', 'sheetMusic', 'sheetMusicLoans', 'events', 'attendance', 'documents',
  'users', 'userRights', 'auditLog',
] as const;
export type EntityName = (typeof ENTITY_NAMES)[number];

const none: RegisterScope = { kind: 'none' };
const viaPerson: RegisterScope = { kind: 'person', field: 'personId' };

function entity(name: EntityName, area: Area, registerScope: RegisterScope, description: string, fields: Record<string, FieldDef>, opts: { system?: boolean; since?: number; table?: string; idColumn?: string; indexes?: EntityDef['indexes'] } = {}): EntityDef {
  return {
    ...(opts.indexes ? { indexes: opts.indexes } : {}),
    name,
    table: opts.table ?? toSnake(name),
    area,
    registerScope,
    system: opts.system ?? false,
    since: opts.since ?? 1,
    idColumn: opts.idColumn ?? 'id',
    fields,
    description,
  };
}

export function toSnake(s: string): string {
  return s.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase());
}

const personal: Opt = { sensitivity: 'personal' };
const contact: Opt = { sensitivity: 'contact' };
const opt = (o: Opt = {}): Opt => ({ ...o, optional: true });

export const MODEL: Readonly<Record<EntityName, EntityDef>> = {
  persons: entity('persons', 'members', viaPerson, 'A member, former member, guardian or contact person', {
    firstName: f.name(100, personal),
    lastName: f.name(100, { ...personal, index: true }),
    gender: f.enumOf(['female', 'male', 'diverse', 'unspecified'], opt(personal)),
    birthDate: f.date(opt(personal)),
    street: f.text(200, opt(contact)),
    postalCode: f.text(20, opt(contact)),
    city: f.text(100, opt(contact)),
    country: f.text(2, opt(contact)),
    phones: f.list(5, 40, opt(contact)),
    emails: f.list(5, 254, opt(contact)),
    guardianPersonId: f.ref('persons', opt({ ...personal, description: 'legal guardian of a minor' })),
    photoConsent: f.bool({ ...personal, description: 'consent to publish photos' }),
    blocked: f.bool({ description: 'processing restricted (GDPR Art. 18): read-only, hidden from lists' }),
    notes: f.text(2000, opt(personal)),
  }),
  memberships: entity('memberships', 'members', viaPerson, 'A membership period; honours count active years only', {
    personId: f.ref('persons'),
    kind: f.enumOf(['active', 'passive', 'honorary', 'training']),
    from: f.date(),
    to: f.date(opt()),
    insured: f.bool(),
  }),
  registers: entity('registers', 'registers', { kind: 'column', field: 'id' }, 'An orchestra section (register)', {
    name: f.name(100, { unique: true }),
    description: f.text(500, opt()),
    sortOrder: f.int(0, 10_000, opt()),
  }),
  registerAssignments: entity('registerAssignments', 'registers', { kind: 'column', field: 'registerId' }, 'A person playing in a register', {
    personId: f.ref('persons'),
    registerId: f.ref('registers'),
    instrument: f.text(100, opt()),
    from: f.date(),
    to: f.date(opt()),
    leader: f.bool({ description: 'leads the register' }),
  }, {
    // The register scope (storage/club/data-rows.ts) probes these: a person's active assignments in
    // a set of registers, and a register's active members; both covering (issue 21).
    indexes: [
      { columns: ['personId', 'registerId', 'to'], since: 2 },
      { columns: ['registerId', 'personId', 'to'], since: 2 },
    ],
  }),
  offices: entity('offices', 'offices', viaPerson, 'An office held (board, treasurer, conductor, ...)', {
    personId: f.ref('persons'),
    office: f.name(100),
    from: f.date(),
    to: f.date(opt()),
  }),
  honours: entity('honours', 'honours', viaPerson, 'An honour for years of (active) membership or merit', {
    personId: f.ref('persons'),
    level: f.name(100),
    years: f.int(0, 200, opt()),
    issuer: f.text(200, opt()),
    status: f.enumOf(['determined', 'applied', 'awarded']),
    date: f.date(opt()),
  }),
  fees: entity('fees', 'finance', viaPerson, 'A membership fee or other charge', {
    personId: f.ref('persons'),
    description: f.name(200),
    amountCents: f.money(),
    dueDate: f.date(opt()),
    paidDate: f.date(opt()),
    sepaMandateId: f.ref('sepaMandates', opt()),
  }),
  sepaMandates: entity('sepaMandates', 'finance', viaPerson, 'A SEPA direct-debit mandate (bank data: most sensitive)', {
    personId: f.ref('persons'),
    iban: f.iban(),
    bic: f.text(11, opt({ sensitivity: 'bank' })),
    accountHolder: f.name(200, { sensitivity: 'bank' }),
    mandateReference: f.name(35, { sensitivity: 'bank', unique: true }),
    signedDate: f.date(opt()),
    revokedDate: f.date(opt()),
  }),
  inventoryItems: entity('inventoryItems', 'inventory', none, 'An instrument, uniform or other item the club owns', {
    kind: f.enumOf(['instrument', 'uniform', 'equipment', 'other']),
    name: f.name(200),
    serialNumber: f.text(100, opt()),
    acquiredDate: f.date(opt()),
    valueCents: f.money(opt()),
    condition: f.text(200, opt()),
  }),
  inventoryLoans: entity('inventoryLoans', 'inventory', viaPerson, 'An item lent to a person', {
    itemId: f.ref('inventoryItems'),
    personId: f.ref('persons'),
    from: f.date(),
    to: f.date(opt()),
    returned: f.bool(),
  }),
  sheetMusic: entity('sheetMusic', 'sheetMusic', none, 'A piece in the sheet-music archive', {
    title: f.name(300),
    composer: f.text(200, opt()),
    arranger: f.text(200, opt()),
    publisher: f.text(200, opt()),
    archiveNumber: f.text(50, opt({ index: true })),
    grade: f.text(20, opt()),
  }),
  sheetMusicLoans: entity('sheetMusicLoans', 'sheetMusic', viaPerson, 'Sheet music lent to a person or another club', {
    sheetMusicId: f.ref('sheetMusic'),
    personId: f.ref('persons', opt()),
    borrower: f.text(200, opt({ description: 'other club, when not a person' })),
    from: f.date(),
    to: f.date(opt()),
    returned: f.bool(),
  }),
  events: entity('events', 'events', { kind: 'column', field: 'registerId' }, 'A rehearsal, concert or other event, club-wide or for one register', {
    kind: f.enumOf(['rehearsal', 'concert', 'meeting', 'other']),
    title: f.name(200),
    start: f.dateTime(),
    end: f.dateTime(opt()),
    location: f.text(200, opt()),
    registerId: f.ref('registers', opt({ description: 'null: the whole club' })),
  }),
  attendance: entity('attendance', 'events', viaPerson, 'Whether a person attended an event', {
    eventId: f.ref('events'),
    personId: f.ref('persons'),
    status: f.enumOf(['present', 'excused', 'absent', 'late']),
    reason: f.text(300, opt({ sensitivity: 'special', description: 'reason of absence: often health data (GDPR Art. 9), never logged in clear' })),
  }),
  documents: entity('documents', 'documents', none, 'An encrypted document (honour file, federation registration, reporter document)', {
    kind: f.enumOf(['honour', 'federation-registration', 'reporter', 'other']),
    name: f.name(255),
    mediaType: f.text(100, opt()),
    size: f.int(0, Number.MAX_SAFE_INTEGER),
    sha256: f.sha256(),
    personId: f.ref('persons', opt()),
    file: { ...f.text(64, { unique: true, description: 'file name under docs/' }), serverOnly: true },
    wrappedKey: f.blob(69, { sensitivity: 'secret', description: 'document key wrapped by the club data key' }),
  }),
  users: entity('users', 'admin', none, 'A login of the club (the administrator is named in the contract)', {
    username: f.name(64, { unique: true }),
    displayName: f.text(200, opt()),
    personId: f.ref('persons', opt()),
    passwordHash: f.text(200, { sensitivity: 'secret' }),
    mustChangePassword: f.bool(),
    isAdmin: f.bool(),
    disabled: f.bool(),
    lastLogin: f.dateTime(opt()),
  }, { system: true }),
  userRights: entity('userRights', 'admin', { kind: 'column', field: 'registerId' }, 'A right of a user on an area, optionally limited to one register', {
    userId: f.ref('users'),
    area: f.enumOf([...AREAS] as [Area, ...Area[]]),
    registerId: f.ref('registers', opt({ description: 'null: all registers' })),
    level: f.enumOf(['read', 'write']),
  }, { system: true }),
  auditLog: entity('auditLog', 'audit', none, 'Hash-chained change log (logic in issue 4)', {
    time: f.dateTime(),
    user: f.text(64, opt()),
    ip: f.text(45, opt()),
    session: f.text(64, opt()),
    action: f.text(40),
    entity: f.text(40, opt()),
    recordId: f.int(0, Number.MAX_SAFE_INTEGER, opt()),
    changes: f.json(1_000_000, opt()),
    prevHash: f.sha256(opt()),
    hash: f.sha256(),
  }, {
    system: true,
    table: 'audit_log',
    idColumn: 'seq',
    // Every filter of log.query (storage/club/audit-log.ts), each ending in the sequence (the rowid)
    // so the ORDER BY seq needs no sort (issue 21).
    indexes: [
      { columns: ['entity', 'recordId'], since: 2 },
      { columns: ['user'], since: 2 },
      { columns: ['action'], since: 2 },
      { columns: ['time'], since: 2 },
    ],
  }),
};

/**
 * Schema version from which every filterable field of a data entity has its own index (issue 21:
 * every filter and sort a command offers is an index search, not a table scan).
 */
export const INDEX_VERSION = 2;

export const ENTITIES: readonly EntityDef[] = ENTITY_NAMES.map((n) => MODEL[n]);

/** Highest schema version any declaration mentions. */
export function modelVersion(model: Readonly<Record<string, EntityDef>> = MODEL): number {
  let v = 1;
  for (const e of Object.values(model)) {
    v = Math.max(v, e.since);
    for (const fd of Object.values(e.fields)) v = Math.max(v, fd.since);
    for (const ix of e.indexes ?? []) v = Math.max(v, ix.since);
  }
  return Math.max(v, INDEX_VERSION);
}

/** The validators of each entity definition, built once (zod schemas are immutable). */
const VALIDATORS = new WeakMap<object, { create?: z.ZodTypeAny; update?: z.ZodTypeAny }>();

/**
 * Input validator for an entity: `create` requires required fields, `update` makes every field
 * optional. Unknown fields are rejected (strict), so a typo is an error rather than ignored.
 * Built once per entity and mode; the schema returned is shared and must not be changed.
 */
export function validatorFor(entityName: EntityName, mode: 'create' | 'update'): z.ZodTypeAny {
  const e = MODEL[entityName];
  let m = VALIDATORS.get(e);
  if (!m) VALIDATORS.set(e, (m = {}));
  let v = m[mode];
  if (!v) {
    const shape: Record<string, ZodTypeAny> = {};
    for (const [k, fd] of Object.entries(e.fields)) shape[k] = mode === 'update' ? fd.zod.optional() : fd.zod;
    v = m[mode] = z.object(shape).strict();
  }
  return v;
}

/** Fields whose values the audit log and logs must not show in clear. */
export function sensitiveFields(entityName: EntityName): string[] {
  return Object.entries(MODEL[entityName].fields)
    .filter(([, fd]) => fd.sensitivity === 'bank' || fd.sensitivity === 'secret' || fd.sensitivity === 'special')
    .map(([k]) => k);
}
