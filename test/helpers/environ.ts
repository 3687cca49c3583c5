import { readFileSync } from "node:fs";

/** The environment of process `pid` as the kernel holds it (after an execve, the new one). */
export function environOf(pid: number): Map<string, string> {
  const entries = readFileSync(`/proc/${pid}/environ`, "latin1").split("\0").filter(Boolean);
  return new Map(entries.map((entry) => [entry.slice(0, entry.indexOf("=")), entry.slice(entry.indexOf("=") + 1)]));
}

/** `env` without the named variables: what a child gets when the caller's own environment must not decide. */
export function envWithout(env: Readonly<Record<string, string | undefined>>, names: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) if (value !== undefined && !names.includes(name)) out[name] = value;
  return out;
}
