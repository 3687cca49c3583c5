/**
 * The dispatcher: picks the command named by the leading words of argv, handles
 * `--help` and `--version`, parses the rest, runs the command and turns whatever it
 * throws into a message and an exit code. Kept apart from main.ts so that tests
 * can run it in-process with their own output sinks.
 */
import packageJson from "../../package.json" with { type: "json" };
import { argsSynopsis, editDistance, flagUsage, parseArgs } from "./args.ts";
import { commandName, type Command, type CommandIo } from "./command.ts";
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, isUserError, UsageError } from "./errors.ts";
import { COMMANDS } from "./registry.ts";

export const PROGRAM = "fitb";
/** The version is read from package.json at build time; the compiled binary embeds it. */
export const VERSION: string = packageJson.version;
const HELP_FLAGS: ReadonlySet<string> = new Set(["--help", "-h"]);
const VERSION_FLAG = "--version";
const END_OF_FLAGS = "--";
/** Suggest a command within this many edits of a mistyped one. */
const COMMAND_SUGGESTION_DISTANCE_MAX = 2;
/** Column where descriptions start in help listings, so they line up. */
const HELP_NAME_COLUMN_CHARS = 24;

export interface RunOptions {
  readonly io: CommandIo;
  /** FITB_DEBUG=1 adds stacks to internal errors. */
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly commands?: readonly Command[];
}

/** Runs one invocation and returns the exit code; never throws. */
export async function runCli(argv: readonly string[], options: RunOptions): Promise<number> {
  const commands = options.commands ?? COMMANDS;
  const { io } = options;
  const first = argv[0];
  if (first === undefined) {
    writeLines(io.err, topHelp(commands));
    return EXIT_USAGE;
  }
  if (first === "help") return showHelpFor(argv.slice(1), commands, io);
  if (first.startsWith("-")) return runTopLevelFlag(first, commands, io);
  const command = matchCommand(argv, commands);
  if (command === undefined) return reportUnknownCommand(argv, commands, io);
  return runCommand(command, argv.slice(command.path.length), options);
}

function runTopLevelFlag(flag: string, commands: readonly Command[], io: CommandIo): number {
  if (HELP_FLAGS.has(flag)) {
    writeLines(io.out, topHelp(commands));
    return EXIT_OK;
  }
  if (flag === VERSION_FLAG) {
    io.out(`${PROGRAM} ${VERSION}`);
    return EXIT_OK;
  }
  io.err(`${PROGRAM}: unknown flag ${flag}`);
  writeLines(io.err, topUsage());
  return EXIT_USAGE;
}

/** `fitb help`, `fitb help keygen`, `fitb help cluster`. */
function showHelpFor(words: readonly string[], commands: readonly Command[], io: CommandIo): number {
  if (words.length === 0) {
    writeLines(io.out, topHelp(commands));
    return EXIT_OK;
  }
  const command = matchCommand(words, commands);
  if (command !== undefined && command.path.length === words.length) {
    writeLines(io.out, commandHelp(command));
    return EXIT_OK;
  }
  const group = commandsInGroup(words, commands);
  if (group.length > 0) {
    writeLines(io.out, groupHelp(words, group));
    return EXIT_OK;
  }
  return reportUnknownCommand(words, commands, io);
}

/** The command whose path is the longest prefix of argv's leading words. */
function matchCommand(argv: readonly string[], commands: readonly Command[]): Command | undefined {
  let best: Command | undefined;
  for (const command of commands) {
    const matches = command.path.every((word, index) => argv[index] === word);
    if (matches && (best === undefined || command.path.length > best.path.length)) best = command;
  }
  return best;
}

/** Commands whose path starts with the given words (e.g. every "cluster ..." command). */
function commandsInGroup(words: readonly string[], commands: readonly Command[]): Command[] {
  return commands.filter((command) => command.path.length > words.length && words.every((word, index) => command.path[index] === word));
}

function reportUnknownCommand(argv: readonly string[], commands: readonly Command[], io: CommandIo): number {
  const groupWord = argv[0]!;
  const group = commandsInGroup([groupWord], commands);
  if (group.length > 0) return reportGroupMisuse(groupWord, argv.slice(1), group, io);
  const suggestion = closestCommand(groupWord, commands);
  const hint = suggestion === undefined ? "" : ` (did you mean '${suggestion}'?)`;
  io.err(`${PROGRAM}: unknown command '${groupWord}'${hint}`);
  writeLines(io.err, topUsage());
  return EXIT_USAGE;
}

/** `fitb cluster`, `fitb cluster --help` or `fitb cluster bogus`. */
function reportGroupMisuse(groupWord: string, rest: readonly string[], group: readonly Command[], io: CommandIo): number {
  const next = rest[0];
  if (next !== undefined && HELP_FLAGS.has(next)) {
    writeLines(io.out, groupHelp([groupWord], group));
    return EXIT_OK;
  }
  const reason = next === undefined ? `'${groupWord}' needs a subcommand` : `unknown command '${groupWord} ${next}'`;
  io.err(`${PROGRAM}: ${reason}`);
  writeLines(io.err, groupHelp([groupWord], group));
  return EXIT_USAGE;
}

function closestCommand(word: string, commands: readonly Command[]): string | undefined {
  let best: { word: string; distance: number } | undefined;
  for (const command of commands) {
    const candidate = command.path[0]!;
    const distance = editDistance(word, candidate);
    if (distance <= COMMAND_SUGGESTION_DISTANCE_MAX && (best === undefined || distance < best.distance))
      best = { word: candidate, distance };
  }
  return best?.word;
}

async function runCommand(command: Command, rest: readonly string[], options: RunOptions): Promise<number> {
  if (wantsHelp(rest)) {
    writeLines(options.io.out, commandHelp(command));
    return EXIT_OK;
  }
  try {
    const args = parseArgs(rest, command);
    return await command.run(args, options.io);
  } catch (error) {
    return reportCommandError(command, error, options);
  }
}

/** Maps what a command threw to its message and exit code. */
function reportCommandError(command: Command, error: unknown, options: RunOptions): number {
  const { io } = options;
  const name = commandName(command);
  if (error instanceof UsageError) {
    io.err(`${PROGRAM} ${name}: ${error.message}`);
    io.err(`Usage: ${errorSynopsis(command)}`);
    io.err(`Run '${PROGRAM} ${name} --help' for details.`);
    return EXIT_USAGE;
  }
  if (isUserError(error)) {
    writeLines(io.err, `${PROGRAM} ${name}: ${error.message}`);
    return EXIT_FAILURE;
  }
  reportInternalError(name, error, options);
  return EXIT_FAILURE;
}

/** `--help` or `-h` anywhere before `--` asks for help, whatever else is on the line. */
export function wantsHelp(rest: readonly string[]): boolean {
  for (const token of rest) {
    if (token === END_OF_FLAGS) return false;
    if (HELP_FLAGS.has(token)) return true;
  }
  return false;
}

/** One line for the operator; the stack only on request, since it is for developers. */
function reportInternalError(name: string, error: unknown, options: RunOptions): void {
  const message = error instanceof Error ? error.message.split("\n")[0] : String(error);
  const debug = options.env.FITB_DEBUG === "1";
  const hint = debug ? "" : " (set FITB_DEBUG=1 for details)";
  options.io.err(`${PROGRAM} ${name}: internal error: ${message}${hint}`);
  if (debug && error instanceof Error && error.stack !== undefined) writeLines(options.io.err, error.stack);
}

// ---------------------------------------------------------------------------
// Help text.

function topUsage(): string[] {
  return [`Usage: ${PROGRAM} <command> [flags]`, `Run '${PROGRAM} --help' for the list of commands.`];
}

function topHelp(commands: readonly Command[]): string[] {
  return [
    `${PROGRAM} ${VERSION}: a Fault- and Intrusion-Tolerant event Broker`,
    "",
    `Usage: ${PROGRAM} <command> [flags]`,
    "",
    "Commands:",
    ...commands.map((command) => listingLine(commandName(command), command.summary)),
    "",
    "Flags:",
    listingLine("--help, -h", "Show help (also after any command)"),
    listingLine(VERSION_FLAG, "Print the version"),
    "",
    `Run '${PROGRAM} <command> --help' for a command's flags.`,
  ];
}

function groupHelp(words: readonly string[], group: readonly Command[]): string[] {
  return [
    `Usage: ${PROGRAM} ${words.join(" ")} <command> [flags]`,
    "",
    "Commands:",
    ...group.map((command) => listingLine(commandName(command), command.summary)),
  ];
}

export function commandSynopsis(command: Command): string {
  const args = argsSynopsis(command);
  return args === "" ? `${PROGRAM} ${commandName(command)}` : `${PROGRAM} ${commandName(command)} ${args}`;
}

/** The longest synopsis an error message repeats whole: about a terminal line. */
const ERROR_SYNOPSIS_CHARS_MAX = 100;

/**
 * The synopsis a usage error repeats under its message: the whole one when it fits a
 * line, else the required flags, the optional ones folded into `[flags]`, and the
 * positionals (`fitb admin` has some twenty; `--help` lists them all).
 */
export function errorSynopsis(command: Command): string {
  const whole = commandSynopsis(command);
  if (whole.length <= ERROR_SYNOPSIS_CHARS_MAX) return whole;
  const required = command.flags.filter((flag) => flag.required === true);
  const parts = [
    argsSynopsis({ ...command, flags: required, positionals: [] }),
    required.length < command.flags.length ? "[flags]" : "",
    argsSynopsis({ ...command, flags: [] }),
  ];
  return [`${PROGRAM} ${commandName(command)}`, ...parts.filter((part) => part !== "")].join(" ");
}

function commandHelp(command: Command): string[] {
  const lines = [`Usage: ${commandSynopsis(command)}`, "", ...command.description];
  if (command.positionals.length > 0) {
    lines.push("", "Arguments:", ...command.positionals.map((positional) => listingLine(positional.name, positional.description)));
  }
  if (command.flags.length > 0) {
    lines.push("", "Flags:");
    for (const flag of command.flags) {
      const shown = flag.defaultValue === undefined ? flag.description : `${flag.description} (default: ${flag.defaultValue})`;
      lines.push(listingLine(flagUsage(flag), shown));
    }
  }
  if (command.examples.length > 0) lines.push("", "Examples:", ...command.examples.map((example) => `  ${example}`));
  return lines;
}

function listingLine(name: string, description: string): string {
  const padded = name.length < HELP_NAME_COLUMN_CHARS - 3 ? name.padEnd(HELP_NAME_COLUMN_CHARS - 2) : `${name}  `;
  return `  ${padded}${description}`;
}

/** Writes a block (a string that may hold newlines, or lines) line by line. */
function writeLines(write: (line: string) => void, text: string | readonly string[]): void {
  const lines = typeof text === "string" ? text.split("\n") : text;
  for (const line of lines) write(line);
}
