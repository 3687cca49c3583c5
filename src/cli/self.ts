/**
 * The argv that runs this same fitb: the compiled binary is itself the runtime, while
 * from source the runtime needs the entry script.
 */
export function selfCommand(): string[] {
  return Bun.main.endsWith(".ts") ? [process.execPath, Bun.main] : [process.execPath];
}
