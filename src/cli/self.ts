/** Whether this fitb runs from source (the runtime and an entry script), not as the compiled binary. */
export function runningFromSource(): boolean {
  return Bun.main.endsWith(".ts");
}

/**
 * The argv that runs this same fitb: the compiled binary is itself the runtime, while
 * from source the runtime needs the entry script.
 */
export function selfCommand(): string[] {
  return runningFromSource() ? [process.execPath, Bun.main] : [process.execPath];
}

/**
 * The argv that starts this process again as it was started, up to its command's own
 * arguments: from source, the runtime's own flags too (`bun --cpu-prof ...`,
 * `process.execArgv`), which the compiled binary does not take.
 */
export function restartCommand(): string[] {
  return runningFromSource() ? [process.execPath, ...process.execArgv, Bun.main] : [process.execPath];
}
