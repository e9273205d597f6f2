/**
 * Shell completion and man pages generated from a commander tree, so they follow the commands
 * as they are: `commusic completion bash`, `commusicctl completion bash`, and
 * tools/gen-man.ts (docs/man/*.1, checked by tests/cli-docs.test.ts).
 */
import { Argument, Command, Option } from 'commander';
import { printResult } from './cli-util.js';

export interface CommandWords {
  /** Subcommand path from the program, e.g. "users add"; "" is the program itself. */
  path: string;
  subcommands: string[];
  options: string[];
}

function visible(c: Command): Command[] {
  return c.commands.filter((s) => s.name() !== 'help');
}

/** Every command path of the tree with its subcommands and its own options (long and short forms). */
export function commandWords(root: Command): CommandWords[] {
  const out: CommandWords[] = [];
  const walk = (c: Command, path: string[]) => {
    const options = c.options.flatMap((o) => [o.long, o.short].filter((x): x is string => Boolean(x)));
    out.push({ path: path.join(' '), subcommands: visible(c).map((s) => s.name()), options: [...options, ...(path.length === 0 ? [] : ['--help'])] });
    for (const s of visible(c)) walk(s, [...path, s.name()]);
  };
  walk(root, []);
  return out;
}

/**
 * A bash completion script: the words after the program are matched against the command paths
 * (options and their values skipped), and the subcommands and options of the deepest path
 * matched are offered, with the program's global options. Load with
 * `source <(commusic completion bash)` or install into /etc/bash_completion.d/.
 */
export function bashCompletion(root: Command): string {
  const name = root.name();
  const fn = `_${name.replace(/[^A-Za-z0-9_]/g, '_')}`;
  const words = commandWords(root);
  const globals = words.find((w) => w.path === '')!.options;
  const cases = words.map((w) => `    "${w.path}") echo "${[...w.subcommands, ...w.options].join(' ')}" ;;`).join('\n');
  const subs = words.map((w) => `    "${w.path}") echo " ${w.subcommands.join(' ')} " ;;`).join('\n');
  return `# bash completion for ${name}; generated from its command tree ("${name} completion bash").
${fn}_words() {
  case "$1" in
${cases}
  esac
}
${fn}_subs() {
  case "$1" in
${subs}
  esac
}
${fn}() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" path="" w i
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    [[ "$w" == -* ]] && continue
    if [[ "$(${fn}_subs "$path")" == *" $w "* ]]; then path="\${path:+$path }$w"; fi
  done
  local list
  list="$(${fn}_words "$path")"
  [[ -n "$path" ]] && list="$list ${globals.join(' ')}"
  COMPREPLY=( $(compgen -W "$list" -- "$cur") )
}
complete -o default -F ${fn} ${name}
`;
}

function roff(text: string): string {
  return text
    .replace(/\\/g, '\\e')
    .replace(/-/g, '\\-')
    .split('\n')
    .map((l) => (/^[.']/.test(l) ? `\\&${l}` : l))
    .join('\n');
}

function optionLines(opts: readonly Option[]): string[] {
  return opts.flatMap((o) => ['.TP', `.B ${roff(o.flags)}`, roff(o.description + (o.argChoices ? ` (one of: ${o.argChoices.join(', ')})` : ''))]);
}

function usageOf(c: Command): string {
  const names: string[] = [];
  for (let x: Command | null = c; x; x = x.parent) names.unshift(x.name());
  return `${names.join(' ')} ${c.usage()}`.trim();
}

/**
 * A man page (section 1, man(7) macros) for the program: NAME, SYNOPSIS, DESCRIPTION, OPTIONS
 * (the global ones), COMMANDS (every command path with its usage, description and options),
 * EXIT STATUS and ENVIRONMENT. Deterministic: no date, no defaults that depend on the
 * environment, so the committed file can be compared with a fresh one.
 */
export function manPage(root: Command, o: { version: string; environment?: readonly [string, string][] }): string {
  const name = root.name();
  const lines: string[] = [
    `.\\" Generated from the ${name} command tree by tools/gen-man.ts; do not edit.`,
    `.TH ${name.toUpperCase()} 1 "" "ComMusic ${roff(o.version)}" "ComMusic"`,
    '.SH NAME',
    `${name} \\- ${roff(root.description())}`,
    '.SH SYNOPSIS',
    `.B ${name}`,
    '[\\fIoptions\\fR] \\fIcommand\\fR [\\fIargs\\fR]',
    '.SH DESCRIPTION',
    roff(root.description()) + '.',
    `Every command accepts \\fB\\-\\-help\\fR; \\fB${name} completion bash\\fR prints a bash completion script.`,
    '.SH OPTIONS',
    ...optionLines(root.options),
    '.SH COMMANDS',
  ];
  const walk = (c: Command) => {
    for (const s of visible(c)) {
      lines.push('.SS', `.nf`, roff(usageOf(s)), '.fi');
      if (s.description()) lines.push(roff(s.description()));
      if (s.options.length) lines.push('.RS', ...optionLines(s.options), '.RE');
      walk(s);
    }
  };
  walk(root);
  lines.push('.SH EXIT STATUS', '0 success, 1 failure, 2 usage error (unknown command or option, malformed argument), 130 interrupted.');
  if (o.environment?.length) {
    lines.push('.SH ENVIRONMENT');
    for (const [k, v] of o.environment) lines.push('.TP', `.B ${k}`, roff(v));
  }
  lines.push('.SH SEE ALSO', 'commusic(1), commusicctl(1), commusicd(1); docs/OPERATIONS.md, docs/PROTOCOL.md');
  return `${lines.join('\n')}\n`;
}

/** Adds `completion bash` to a program (its tree as JSON with --json). */
export function registerCompletionCommand(program: Command): void {
  program
    .command('completion')
    .description('print a shell completion script generated from the command tree (source <(PROGRAM completion bash))')
    .addArgument(new Argument('[shell]', 'the shell').choices(['bash']).default('bash'))
    .option('--json', 'print the command tree (paths, subcommands, options) as JSON instead')
    .action((_shell: string, o: { json?: boolean }) => {
      if (o.json) printResult(commandWords(program), true, () => '');
      else process.stdout.write(bashCompletion(program));
    });
}
