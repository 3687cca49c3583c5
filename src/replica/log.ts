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

export function logLevelFromEnv(): LogLevel {
  const level = process.env.FITB_LOG;
  return level === "debug" || level === "warn" || level === "error" ? level : "info";
}
