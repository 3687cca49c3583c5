/**
 * JSON-lines logging on stdout (systemd's journal keeps it). One object a line:
 * {"ts":"...","level":"info","msg":"...", ...fields}. Debug lines appear only with
 * FITB_LOG=debug.
 */
export type LogLevel = "debug" | "info" | "warn" | "error";

const LEVEL_RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export interface Log {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export function createLog(
  base: Record<string, unknown>,
  minLevel: LogLevel = "info",
  write: (line: string) => void = (line) => process.stdout.write(line),
): Log {
  const emit = (level: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    if (LEVEL_RANK[level] < LEVEL_RANK[minLevel]) return;
    write(`${JSON.stringify({ ts: new Date().toISOString(), level, msg, ...base, ...fields })}\n`);
  };
  return {
    debug: (msg, fields) => emit("debug", msg, fields),
    info: (msg, fields) => emit("info", msg, fields),
    warn: (msg, fields) => emit("warn", msg, fields),
    error: (msg, fields) => emit("error", msg, fields),
  };
}

export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

/** FITB_LOG's level (unset or empty: info); anything else is refused with a reason, not taken as info. */
export function parseLogLevel(value: string | undefined): { ok: true; level: LogLevel } | { ok: false; reason: string } {
  if (value === undefined || value === "") return { ok: true, level: "info" };
  const level = LOG_LEVELS.find((candidate) => candidate === value.toLowerCase());
  if (level !== undefined) return { ok: true, level };
  return { ok: false, reason: `FITB_LOG=${JSON.stringify(value)}: expected one of ${LOG_LEVELS.join(", ")} (default info)` };
}
