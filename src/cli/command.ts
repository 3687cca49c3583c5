/**
 * What a `fitb` subcommand is: its words (`["cluster", "init"]`), its flags and
 * positionals (which drive parsing and help), and `run`. A new command is one file
 * under commands/ exporting a Command, plus one line in registry.ts.
 */
import type { ArgsSpec, ParsedArgs } from "./args.ts";

export interface CommandIo {
  /** Writes one line to standard output (the command's result, for scripts to read). */
  out(line: string): void;
  /** Writes one line to standard error (progress, warnings, errors). */
  err(line: string): void;
}

export interface Command extends ArgsSpec {
  /** The words that select the command, e.g. ["keygen"] or ["cluster", "init"]. */
  readonly path: readonly string[];
  /** One line for the command list in `fitb --help`. */
  readonly summary: string;
  /** Paragraphs for `fitb <command> --help`, written for the operator. */
  readonly description: readonly string[];
  readonly examples: readonly string[];
  /**
   * Resolves when the command is finished, with the process exit code (the process
   * exits right after, so a long-running command resolves only once it has shut
   * down). Throws UsageError / CommandError for the user's mistakes.
   */
  run(args: ParsedArgs, io: CommandIo): Promise<number> | number;
}

/** "cluster init" */
export function commandName(command: Command): string {
  return command.path.join(" ");
}
