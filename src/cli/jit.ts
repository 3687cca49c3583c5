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
 * descriptors and parent, as systemd expects) with the same command and the option set;
 * the second start finds it set and goes on. That happens before the replica opens its
 * data directory or any socket. `fitb demo` and the systemd unit set the variable, so
 * their replicas start once.
 */

/** The runtime's environment variable for its top tier. */
export const FTL_ENV = "BUN_JSC_useFTLJIT";
/**
 * Set, to the process id, in the environment of the restarted process (execve keeps the
 * id): a process restarts at most once, even if the runtime did not keep the variable as
 * given. A value another process left (a copied environment) does not count.
 */
export const FTL_RESTARTED_ENV = "FITB_FTL_RESTARTED";

export type FtlSetting = "on" | "off";
export const FTL_DEFAULT: FtlSetting = "off";

type Env = Readonly<Record<string, string | undefined>>;

/** The environment variable, as the restart sets it, that makes the runtime run as `setting` asks. */
export function ftlEnvironment(setting: FtlSetting): Record<string, string> {
  return { [FTL_ENV]: setting === "on" ? "true" : "false" };
}

/**
 * Whether the runtime of a process started with `env` runs its top tier, read as the runtime
 * reads a boolean option: false, no or 0 (in any case) turn it off; anything else, or
 * nothing, leaves it on.
 */
export function ftlActive(env: Env = process.env): boolean {
  const value = env[FTL_ENV]?.toLowerCase();
  return !(value === "false" || value === "no" || value === "0");
}

/**
 * The environment to start process `pid` again with, so that the runtime runs with
 * `setting`; null when it already does (nothing to do), or when `pid` is itself such a
 * restart (it happens once).
 */
export function environmentFor(setting: FtlSetting, env: Env, pid: number): Record<string, string> | null {
  if (ftlActive(env) === (setting === "on") || env[FTL_RESTARTED_ENV] === String(pid)) return null;
  const next: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) if (value !== undefined) next[name] = value;
  return { ...next, ...ftlEnvironment(setting), [FTL_RESTARTED_ENV]: String(pid) };
}

type Execve = (file: string, args: string[], env: Record<string, string>) => never;

/** The runtime's execve, or null where it has none. */
function runtimeExecve(): Execve | null {
  const execve = (process as unknown as { execve?: Execve }).execve;
  return typeof execve === "function" ? execve.bind(process) : null;
}

/**
 * Restarts this process in place (execve) with the environment `setting` needs, unless it
 * already has it. `command` is how this program was started (self.ts restartCommand);
 * `args` what follows it. Returns only when no restart was needed (null), or when the
 * restart failed: then why (the replica runs as it is). On a successful restart the
 * runtime says nothing: its warning that execve is experimental would come a tick later,
 * and the process is replaced before that.
 */
export function ensureFtl(
  setting: FtlSetting,
  command: readonly string[],
  args: readonly string[],
  env: Env = process.env,
  execve: Execve | null = runtimeExecve(),
  pid: number = process.pid,
): string | null {
  const next = environmentFor(setting, env, pid);
  if (next === null) return null;
  if (execve === null) return "this runtime cannot restart a process in place (process.execve)";
  const [file, ...rest] = command;
  if (file === undefined) throw new RangeError("ensureFtl: empty command");
  try {
    execve(file, [file, ...rest, ...args], next);
    return "process.execve returned";
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}
