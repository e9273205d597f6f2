import { z } from 'zod';

/**
 * Rights: area x action x scope, deny by default. A user's rights are a list of grants; a
 * request is allowed when some grant covers its area and action, and then only within the
 * union of the scopes of the grants that cover it (a register leader who also holds the member
 * template reads their register and their own record). docs/SECURITY.md "Rights model".
 *
 * `blockedPersons` is the dedicated right to read persons whose processing is restricted
 * (GDPR Art. 18, `persons.blocked`); only its `read` action has a meaning.
 */
export const AREAS = [
  'persons',
  'contact',
  'sensitive',
  'bank',
  'memberships',
  'offices',
  'registers',
  'events',
  'inventory',
  'sheetMusic',
  'documents.honour',
  'documents.federationRegistration',
  'documents.reporter',
  'documents.other',
  'federationReporting',
  'exports',
  'users',
  'changeLog',
  'backups',
  'blockedPersons',
] as const;
export type Area = (typeof AREAS)[number];

export const ACTIONS = ['read', 'create', 'update', 'delete', 'export'] as const;
export type Action = (typeof ACTIONS)[number];

export const scopeSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('club') }).strict(),
  z.object({ kind: z.literal('registers'), registers: z.array(z.number().int().positive()).min(1).max(200) }).strict(),
  z.object({ kind: z.literal('own') }).strict(),
]);
export type Scope = z.infer<typeof scopeSchema>;

export const grantSchema = z
  .object({
    area: z.enum(AREAS),
    actions: z.array(z.enum(ACTIONS)).min(1).max(ACTIONS.length),
    scope: scopeSchema,
  })
  .strict();
export type Grant = z.infer<typeof grantSchema>;
export const rightsSchema = z.array(grantSchema).max(500);

/**
 * The effective scope of an allowed request; undefined means denied. `registers` with
 * `own: true` is the union of register grants and an own-record grant.
 */
export type Effective = { kind: 'club' } | { kind: 'registers'; registers: Set<number>; own: boolean } | { kind: 'own' };

export function effectiveScope(grants: readonly Grant[], area: Area, action: Action): Effective | undefined {
  let registers: Set<number> | undefined;
  let own = false;
  for (const g of grants) {
    if (g.area !== area || !g.actions.includes(action)) continue;
    if (g.scope.kind === 'club') return { kind: 'club' };
    if (g.scope.kind === 'registers') {
      registers ??= new Set();
      for (const r of g.scope.registers) registers.add(r);
    } else own = true;
  }
  if (registers) return { kind: 'registers', registers, own };
  if (own) return { kind: 'own' };
  return undefined;
}

const ALL: Action[] = [...ACTIONS];
const RW: Action[] = ['read', 'create', 'update', 'delete'];
const R: Action[] = ['read'];
const club: Scope = { kind: 'club' };
const own: Scope = { kind: 'own' };

function grants(areas: readonly Area[], actions: Action[], scope: Scope): Grant[] {
  return areas.map((area) => ({ area, actions: [...actions], scope }));
}

export const ROLES = [
  'administrator',
  'board',
  'treasurer',
  'honoursOfficer',
  'secretary',
  'conductor',
  'registerLeader',
  'sheetMusicKeeper',
  'inventoryKeeper',
  'youthLeader',
  'member',
] as const;
export type Role = (typeof ROLES)[number];

/**
 * Starting points for what clubs use; every grant can be adjusted per user afterwards.
 * `registers` is the register set for the register-scoped roles.
 */
export function roleTemplate(role: Role, registers: number[] = []): Grant[] {
  const regScope: Scope = registers.length > 0 ? { kind: 'registers', registers } : own;
  switch (role) {
    case 'administrator':
      return grants(AREAS, ALL, club);
    case 'board':
      return [
        ...grants(['persons', 'contact', 'memberships', 'offices', 'registers', 'events', 'inventory', 'sheetMusic', 'documents.other', 'documents.reporter'], [...RW, 'export'], club),
        ...grants(['sensitive', 'bank', 'documents.honour', 'documents.federationRegistration', 'federationReporting', 'changeLog'], R, club),
        ...grants(['exports'], ['read', 'export'], club),
      ];
    case 'treasurer':
      return [...grants(['persons', 'contact', 'memberships'], R, club), ...grants(['bank'], [...RW, 'export'], club), ...grants(['exports'], ['read', 'export'], club)];
    case 'honoursOfficer':
      return [
        ...grants(['persons', 'memberships', 'offices', 'registers'], R, club),
        ...grants(['memberships'], ['update'], club),
        ...grants(['documents.honour', 'documents.federationRegistration', 'federationReporting'], [...RW, 'export'], club),
      ];
    case 'secretary':
      return [...grants(['persons', 'contact', 'memberships', 'offices', 'registers'], RW, club), ...grants(['events', 'documents.reporter', 'documents.other'], RW, club)];
    case 'conductor':
      return [...grants(['persons', 'registers'], R, club), ...grants(['events', 'sheetMusic'], RW, club)];
    case 'registerLeader':
      return [...grants(['persons', 'contact'], R, regScope), ...grants(['persons'], ['update'], regScope), ...grants(['events'], RW, regScope), ...grants(['registers'], R, club)];
    case 'sheetMusicKeeper':
      return [...grants(['persons', 'registers'], R, club), ...grants(['sheetMusic'], [...RW, 'export'], club)];
    case 'inventoryKeeper':
      return [...grants(['persons'], R, club), ...grants(['inventory'], [...RW, 'export'], club)];
    case 'youthLeader':
      return [...grants(['persons', 'contact', 'memberships'], R, regScope), ...grants(['events'], RW, regScope), ...grants(['registers'], R, club)];
    case 'member':
      return [...grants(['persons', 'contact', 'sensitive', 'bank', 'memberships'], R, own), ...grants(['events'], R, club), ...grants(['registers'], R, club)];
  }
}

/**
 * Whether every row reachable with scope `row` is also covered by scope `field`, judged from
 * the scopes alone (not from the data): club covers everything; a register set covers the
 * same or fewer registers; an own-record grant covers only an own-record grant. Used to allow a
 * filter or sort on a field only where the field is readable on every row it ranges over.
 */
export function scopeCovers(field: Effective | undefined, row: Effective): boolean {
  if (!field) return false;
  if (field.kind === 'club') return true;
  if (row.kind === 'club') return false;
  const fieldOwn = field.kind === 'own' || field.own;
  if (row.kind === 'own') return fieldOwn;
  if (row.own && !fieldOwn) return false;
  if (field.kind === 'own') return row.registers.size === 0;
  for (const r of row.registers) if (!field.registers.has(r)) return false;
  return true;
}

