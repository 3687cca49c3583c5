/**
 * The JavaScript runtime's top compiler tier in a replica (`fitb replica --ftl on|off`).
 *
 * JavaScriptCore compiles hot JavaScript in four tiers; the top one (FTL) makes the fastest
 * code and costs the most to compile. A replica spends its time in native code (ed25519,
 * SHA-256, SQLite, socket writes) that FTL does not speed up, while FTL's compiles, on a
 * thread of their own, take cores the event loops need. Measured on four fresh replicas on
 * two cores (README, Performance): at 2,000 ev/s the compiler thread did 9-11 µs per event
 * without FTL against 37-40 with it, and p99 fell by about a quarter; once warm, and
 * saturated, the two were the same within the machine's noise.
 *
 * The runtime reads its options from the environment (`BUN_JSC_useFTLJIT`) when it
 * starts, before any of this code runs. So a replica whose environment does not already
 * say what `--ftl` asks for replaces itself (execve: the same process id, open
 * descriptors and parent, as systemd and `fitb demo` expect) with the same command and
 * the option set; the second start finds it set and goes on. That happens before the
 * replica opens its data directory or any socket.
 */

/** The runtime's environment variable for its top tier. */
export const FTL_ENV = "BUN_JSC_useFTLJIT";

export type FtlSetting = "on" | "off";
export const FTL_SETTINGS: readonly FtlSetting[] = ["on", "off"];
export const FTL_DEFAULT: FtlSetting = "off";

/** The value of FTL_ENV that `setting` asks for. */
function envValue(setting: FtlSetting): string {
  return setting === "on" ? "true" : "false";
}

/**
 * The environment to start this process again with, so that the runtime runs with
 * `setting`; null when the environment already says so (nothing to do).
 */
export function environmentFor(setting: FtlSetting, env: Readonly<Record<string, string | undefined>>): Record<string, string> | null {
  const wanted = envValue(setting);
  if (env[FTL_ENV] === wanted) return null;
  const next: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) if (value !== undefined) next[name] = value;
  next[FTL_ENV] = wanted;
  return next;
}

/** Whether the runtime of this process was started with its top tier on (what it reads at start). */
export function ftlActive(env: Readonly<Record<string, string | undefined>> = process.env): boolean {
  const value = env[FTL_ENV]?.toLowerCase();
  return !(value === "false" || value === "0");
}

type Execve = (file: string, args: string[], env: Record<string, string>) => never;

/** The runtime's execve, or null where it has none. */
function runtimeExecve(): Execve | null {
  const execve = (process as unknown as { execve?: Execve }).execve;
  return typeof execve === "function" ? execve.bind(process) : null;
}

/**
 * Restarts this process in place (execve) with the environment `setting` needs, unless it
 * already has it. `command` is how this program is started (the executable, and the script
 * when run from source); `args` what follows it. Returns only when no restart was needed
 * (null), or when the restart failed: then why (the replica runs as it is).
 */
export function ensureFtl(
  setting: FtlSetting,
  command: readonly string[],
  args: readonly string[],
  env: Readonly<Record<string, string | undefined>> = process.env,
  execve: Execve | null = runtimeExecve(),
): string | null {
  const next = environmentFor(setting, env);
  if (next === null) return null;
  if (execve === null) return "this runtime cannot restart a process in place (process.execve)";
  const [file, ...rest] = command;
  if (file === undefined) throw new RangeError("ensureFtl: empty command");
  // The runtime calls process.execve experimental, and would say so on standard error at
  // every start; the variable is read at the call, and is not in the new environment.
  const quiet = process.env.NODE_NO_WARNINGS;
  process.env.NODE_NO_WARNINGS = "1";
  try {
    execve(file, [file, ...rest, ...args], next);
    return "process.execve returned";
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  } finally {
    if (quiet === undefined) delete process.env.NODE_NO_WARNINGS;
    else process.env.NODE_NO_WARNINGS = quiet;
  }
}
