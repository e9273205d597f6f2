/**
 * The `commusic` commands on the club's user accounts and their rights (club administrators):
 * `users list/add/disable/enable/reset-password` and `rights show/set`. Registered by
 * commusic-program.ts, which owns the session.
 */
import { Option, type Command } from 'commander';
import { ROLES } from '../daemon/club/rights.js';
import { collect, getSecret, printResult, table, usage } from './cli-util.js';
import type { ClientSession } from './client-session.js';

/** Registers `users ...` and `rights ...` on the program. */
export function registerUserCommands(program: Command, s: ClientSession): void {
  const { call, callAll, session, act } = s;

  async function userId(name: string): Promise<number> {
    if (/^#\d+$/.test(name)) return Number(name.slice(1));
    const items = await callAll<{ id: number; username: string }>('users.list', {});
    const u = items.find((x) => x.username === name);
    if (!u) throw Object.assign(new Error(`no user "${name}" in this club ("commusic users list" shows them)`), { code: 'NOT_FOUND' });
    return u.id;
  }

  async function registerIds(names: string[]): Promise<number[]> {
    if (names.length === 0) return [];
    const items = await callAll<{ id: number; name: string }>('registers.list', { limit: 500 });
    return names.map((n) => {
      const r = items.find((x) => x.name === n) ?? (/^\d+$/.test(n) ? items.find((x) => x.id === Number(n)) : undefined);
      if (!r) throw Object.assign(new Error(`no register "${n}" (known: ${items.map((x) => x.name).join(', ') || 'none'})`), { code: 'NOT_FOUND' });
      return r.id;
    });
  }

  const roleOption = () => new Option('--role <role>', 'role template').choices([...ROLES]);

  const users = program.command('users').description("the club's user accounts (club administrators)");
  users
    .command('list')
    .option('--json', 'print JSON')
    .action(
      act(async (o: { json?: boolean }) => {
        const r = { items: await callAll<{ id: number; username: string; displayName: string | null; role: string; isAdmin: boolean; disabled: boolean; mustChangePassword: boolean; lastLogin: string | null }>('users.list', {}) };
        printResult(r, o.json, (s) =>
          table(['ID', 'USER', 'NAME', 'ROLE', 'ADMIN', 'STATE', 'LAST LOGIN'], s.items.map((u) => [u.id, u.username, u.displayName, u.role, u.isAdmin ? 'yes' : 'no', u.disabled ? 'disabled' : u.mustChangePassword ? 'must change password' : 'active', u.lastLogin])),
        );
      }),
    );
  users
    .command('add <username>')
    .description('create a user; without a password source a one-time password is printed once')
    .option('--display-name <name>', 'shown name')
    .addOption(roleOption())
    .option('--register <name>', 'register (orchestra section) for the role; repeatable', collect, [])
    .option('--admin', 'make the user a club administrator')
    .option('--user-password-stdin', "read the new user's password from standard input (the line after the login password)")
    .option('--user-password-file <file>', "read the new user's password from this file")
    .option('--ask-user-password', "ask for the new user's password on the terminal")
    .option('--json', 'print JSON')
    .action(
      act(async (username: string, o: { displayName?: string; role?: string; register: string[]; admin?: boolean; userPasswordStdin?: boolean; userPasswordFile?: string; askUserPassword?: boolean; json?: boolean }) => {
        if (o.register.length && !o.role) usage('--register needs --role');
        await session();
        const password = await getSecret('password of the new user', 'user-password', { stdin: o.userPasswordStdin, file: o.userPasswordFile }, { confirm: true, optional: !o.askUserPassword });
        const registers = await registerIds(o.register);
        const r = (await call('users.create', { username, ...(password ? { password } : {}), ...(o.displayName ? { displayName: o.displayName } : {}), ...(o.role ? { role: o.role, registers } : {}), ...(o.admin ? { admin: true } : {}) })) as { user: { id: number }; oneTimePassword?: string };
        printResult(r, o.json, (s) => [`created user ${username} (id ${s.user.id})`, ...(s.oneTimePassword ? [`one-time password (shown once; changed at first login): ${s.oneTimePassword}`] : [])].join('\n'));
      }),
    );
  for (const [name, command, verb] of [
    ['disable', 'users.disable', 'disabled'],
    ['enable', 'users.enable', 'enabled'],
  ] as const) {
    users
      .command(`${name} <username>`)
      .description(name === 'disable' ? 'refuse logins of this user (ends their sessions)' : 'allow logins again')
      .option('--json', 'print JSON')
      .action(
        act(async (username: string, o: { json?: boolean }) => {
          const r = await call(command, { id: await userId(username) });
          printResult(r, o.json, () => `user ${username} ${verb}`);
        }),
      );
  }
  users
    .command('reset-password <username>')
    .description('set a new password the user must change at the next login; without a source a one-time password is printed once')
    .option('--user-password-stdin', 'read the password from standard input (the line after the login password)')
    .option('--user-password-file <file>', 'read the password from this file')
    .option('--ask-user-password', 'ask for the password on the terminal')
    .option('--json', 'print JSON')
    .action(
      act(async (username: string, o: { userPasswordStdin?: boolean; userPasswordFile?: string; askUserPassword?: boolean; json?: boolean }) => {
        await session();
        const password = await getSecret(`new password of ${username}`, 'user-password', { stdin: o.userPasswordStdin, file: o.userPasswordFile }, { confirm: true, optional: !o.askUserPassword });
        const r = (await call('users.resetPassword', { id: await userId(username), ...(password ? { password } : {}) })) as { oneTimePassword?: string };
        printResult(r, o.json, (s) => [`password of ${username} reset; it must be changed at the next login`, ...(s.oneTimePassword ? [`one-time password (shown once): ${s.oneTimePassword}`] : [])].join('\n'));
      }),
    );

  const rights = program.command('rights').description("a user's rights: role template, registers, administrator");
  rights
    .command('show <username>')
    .option('--json', 'print JSON')
    .action(
      act(async (username: string, o: { json?: boolean }) => {
        const r = (await call('rights.get', { userId: await userId(username) })) as { admin: boolean; role: string; grants: { area: string; actions: string[]; scope: { kind: string; registers?: number[] } }[] };
        printResult(r, o.json, (s) =>
          [`${username}: role ${s.role}${s.admin ? ', administrator' : ''}`, table(['AREA', 'ACTIONS', 'SCOPE'], s.grants.map((x) => [x.area, x.actions.join(','), x.scope.kind === 'registers' ? `registers ${(x.scope.registers ?? []).join(',')}` : x.scope.kind]))].join('\n'),
        );
      }),
    );
  rights
    .command('set <username>')
    .description('give a user a role template, limited to registers where the role works per register')
    .addOption(roleOption().makeOptionMandatory())
    .option('--register <name>', 'register name (or id); repeatable', collect, [])
    .option('--admin', 'make the user a club administrator')
    .option('--no-admin', 'take the administrator right away')
    .option('--json', 'print JSON')
    .action(
      act(async (username: string, o: { role: string; register: string[]; admin?: boolean; json?: boolean }) => {
        const id = await userId(username);
        const registers = await registerIds(o.register);
        const r = await call('rights.set', { userId: id, role: o.role, registers, ...(o.admin !== undefined ? { admin: o.admin } : {}) });
        printResult(r, o.json, () => `${username} now has role ${o.role}${o.register.length ? ` for ${o.register.join(', ')}` : ''}`);
      }),
    );
}
