/**
 * The command-line parser: long flags only (`--name value`, `--name=value`),
 * boolean flags, repeated flags, positionals, and `--` to end the flags.
 *
 * Short single-dash flags are not supported on purpose: the commands are run from
 * scripts and unit files, where a long name documents itself. (`-h` is the one
 * exception, handled by the dispatcher as a synonym of `--help`.)
 */
import { UsageError } from "./errors.ts";

export interface FlagSpec {
  /** The name without the leading dashes. */
  readonly name: string;
  readonly kind: "string" | "boolean";
  /** What the value is called in usage text, e.g. "FILE" (string flags). */
  readonly valueName?: string;
  readonly description: string;
  readonly required?: boolean;
  /** May be given more than once; all values are kept in order. */
  readonly repeated?: boolean;
  /** Value used when the flag is absent (string flags), also shown in help. */
  readonly defaultValue?: string;
}

export interface PositionalSpec {
  readonly name: string;
  readonly description: string;
  readonly required: boolean;
  /** Free text (a message), which may hold spaces: an argument past it is taken for its split rest, and the error says to quote it. */
  readonly text?: boolean;
}

export interface ArgsSpec {
  readonly flags: readonly FlagSpec[];
  readonly positionals: readonly PositionalSpec[];
}

const FLAG_PREFIX = "--";
const END_OF_FLAGS = "--";
/** Suggest a flag name within this many single-character edits of a mistyped one. */
const SUGGESTION_DISTANCE_MAX = 2;

/** The parsed arguments of one command, read through typed accessors. */
export class ParsedArgs {
  constructor(
    private readonly spec: ArgsSpec,
    private readonly values: ReadonlyMap<string, readonly string[]>,
    private readonly booleans: ReadonlySet<string>,
    private readonly positionalValues: ReadonlyMap<string, string>,
  ) {}

  /** The value of a string flag, its default, or undefined. */
  string(name: string): string | undefined {
    const flag = this.flag(name, "string");
    return this.values.get(name)?.at(-1) ?? flag.defaultValue;
  }

  /** The value of a string flag that is required or has a default. */
  requiredString(name: string): string {
    const value = this.string(name);
    if (value === undefined) throw new UsageError(`missing required flag ${flagUsage(this.flag(name, "string"))}`);
    return value;
  }

  /** Every value of a repeated string flag, in the order given. */
  strings(name: string): readonly string[] {
    this.flag(name, "string");
    return this.values.get(name) ?? [];
  }

  boolean(name: string): boolean {
    this.flag(name, "boolean");
    return this.booleans.has(name);
  }

  /** A string flag read as a decimal integer within [min, max]; a bad value is a usage error. */
  integer(name: string, min: number, max: number): number | undefined {
    const text = this.string(name);
    if (text === undefined) return undefined;
    return parseIntegerArg(`--${name}`, text, min, max);
  }

  requiredInteger(name: string, min: number, max: number): number {
    return parseIntegerArg(`--${name}`, this.requiredString(name), min, max);
  }

  positional(name: string): string | undefined {
    if (!this.spec.positionals.some((positional) => positional.name === name)) {
      throw new Error(`positional ${name} is not declared by this command`);
    }
    return this.positionalValues.get(name);
  }

  requiredPositional(name: string): string {
    const value = this.positional(name);
    if (value === undefined) throw new UsageError(`missing argument ${name}`);
    return value;
  }

  /** Reading an undeclared flag is a programming error, not a user error. */
  private flag(name: string, kind: FlagSpec["kind"]): FlagSpec {
    const flag = this.spec.flags.find((candidate) => candidate.name === name);
    if (flag === undefined || flag.kind !== kind) throw new Error(`${kind} flag --${name} is not declared by this command`);
    return flag;
  }
}

const INTEGER_PATTERN = /^-?[0-9]+$/;

function parseIntegerArg(label: string, text: string, min: number, max: number): number {
  const value = INTEGER_PATTERN.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new UsageError(`${label}: expected an integer in ${min}..${max}, got ${JSON.stringify(text)}`);
  }
  return value;
}

/** Parses argv against the spec; every problem is a UsageError naming the flag. */
export function parseArgs(argv: readonly string[], spec: ArgsSpec): ParsedArgs {
  const values = new Map<string, string[]>();
  const booleans = new Set<string>();
  const positionals: string[] = [];
  let index = 0;
  while (index < argv.length) {
    const token = argv[index]!;
    index += 1;
    if (token === END_OF_FLAGS) {
      positionals.push(...argv.slice(index));
      break;
    }
    if (!isFlagToken(token)) {
      positionals.push(token);
      continue;
    }
    const { name, inlineValue } = splitFlag(token);
    const flag = findFlag(spec, name, token);
    if (flag.kind === "boolean") {
      if (inlineValue !== undefined) throw new UsageError(`--${name} does not take a value`);
      if (booleans.has(name) && flag.repeated !== true) throw new UsageError(`--${name} given more than once`);
      booleans.add(name);
      continue;
    }
    let value = inlineValue;
    if (value === undefined) {
      const next = argv[index];
      if (next === undefined || next.startsWith(FLAG_PREFIX)) throw new UsageError(`--${name} needs a value (${valueName(flag)})`);
      value = next;
      index += 1;
    }
    const existing = values.get(name);
    if (existing !== undefined && flag.repeated !== true) throw new UsageError(`--${name} given more than once`);
    values.set(name, [...(existing ?? []), value]);
  }
  checkRequiredFlags(spec, values);
  return new ParsedArgs(spec, values, booleans, assignPositionals(spec, positionals));
}

/** `--x`, `--x=v`, and single-dash words other than "-" and negative numbers are flags. */
function isFlagToken(token: string): boolean {
  if (token.startsWith(FLAG_PREFIX)) return true;
  return token.startsWith("-") && token !== "-" && !/^-[0-9]/.test(token);
}

function splitFlag(token: string): { name: string; inlineValue: string | undefined } {
  if (!token.startsWith(FLAG_PREFIX)) return { name: token, inlineValue: undefined };
  const body = token.slice(FLAG_PREFIX.length);
  const equals = body.indexOf("=");
  if (equals < 0) return { name: body, inlineValue: undefined };
  return { name: body.slice(0, equals), inlineValue: body.slice(equals + 1) };
}

function findFlag(spec: ArgsSpec, name: string, token: string): FlagSpec {
  const flag = token.startsWith(FLAG_PREFIX) ? spec.flags.find((candidate) => candidate.name === name) : undefined;
  if (flag !== undefined) return flag;
  const shown = token.startsWith(FLAG_PREFIX) ? `--${name}` : token;
  const suggestion = closestFlag(spec, name.replace(/^-+/, ""));
  const hint = suggestion === undefined ? "" : ` (did you mean --${suggestion}?)`;
  throw new UsageError(`unknown flag ${shown}${hint}`);
}

function checkRequiredFlags(spec: ArgsSpec, values: ReadonlyMap<string, readonly string[]>): void {
  for (const flag of spec.flags) {
    if (flag.required === true && !values.has(flag.name)) throw new UsageError(`missing required flag ${flagUsage(flag)}`);
  }
}

function assignPositionals(spec: ArgsSpec, given: readonly string[]): Map<string, string> {
  if (given.length > spec.positionals.length) {
    const last = spec.positionals[spec.positionals.length - 1];
    // `fitb pub net.links eth0 down`: the shell split a message with spaces.
    const hint = last?.text === true ? ` (${last.name} is one argument: quote a value with spaces)` : "";
    throw new UsageError(`unexpected argument ${JSON.stringify(given[spec.positionals.length])}${hint}`);
  }
  const assigned = new Map<string, string>();
  spec.positionals.forEach((positional, position) => {
    const value = given[position];
    if (value !== undefined) assigned.set(positional.name, value);
    else if (positional.required) throw new UsageError(`missing argument ${positional.name}`);
  });
  return assigned;
}

function valueName(flag: FlagSpec): string {
  return flag.valueName ?? "VALUE";
}

/** `--out FILE` or `--force`. */
export function flagUsage(flag: FlagSpec): string {
  return flag.kind === "boolean" ? `--${flag.name}` : `--${flag.name} ${valueName(flag)}`;
}

/** The one-line synopsis of the flags and positionals: `--out FILE [--force] FILE`. */
export function argsSynopsis(spec: ArgsSpec): string {
  const parts = spec.flags.map((flag) => {
    const usage = flagUsage(flag) + (flag.repeated === true ? " ..." : "");
    return flag.required === true ? usage : `[${usage}]`;
  });
  for (const positional of spec.positionals) parts.push(positional.required ? positional.name : `[${positional.name}]`);
  return parts.join(" ");
}

function closestFlag(spec: ArgsSpec, name: string): string | undefined {
  let best: { name: string; distance: number } | undefined;
  for (const flag of spec.flags) {
    const distance = editDistance(name, flag.name);
    if (distance <= SUGGESTION_DISTANCE_MAX && (best === undefined || distance < best.distance)) best = { name: flag.name, distance };
  }
  return best?.name;
}

/** Levenshtein distance; names are short, so the quadratic table is fine. */
export function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i += 1) {
    const current = [i];
    for (let j = 1; j <= b.length; j += 1) {
      const substitution = previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min(previous[j]! + 1, current[j - 1]! + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length]!;
}
