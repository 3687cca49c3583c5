/**
 * What every run-on-purpose program (the attack harness, bench:peers, bench:threads, the
 * profiler) does before its work: read its arguments, and stop cleanly on a signal or past
 * its time bound.
 */

/**
 * The parsed options; on a bad argument the reason and the usage go to standard error and
 * the program exits 2; with --help the usage goes to standard output and it exits 0.
 */
export function optionsOrExit<T extends { readonly help: boolean }>(parsed: T | string, usage: string): T {
  if (typeof parsed === "string") {
    console.error(parsed);
    console.error(usage);
    process.exit(2);
  }
  if (parsed.help) {
    console.log(usage);
    process.exit(0);
  }
  return parsed;
}

/** `text` as an integer in `min..max`, or the refusal naming `flag` (a program's numeric arguments). */
export function integerArgument(flag: string, text: string | undefined, min: number, max: number): number | string {
  const value = Number(text);
  return Number.isInteger(value) && value >= min && value <= max
    ? value
    : `${flag}: an integer in ${min}..${max}, got ${text ?? "nothing"}`;
}

/**
 * `stop` (which kills what the program started and exits) runs on SIGINT (130), SIGTERM
 * (143), or once `maxMs` have passed (1). Returns the deadline's timer, to clear when the
 * work is done.
 */
export function stopOnSignalsAndDeadline(stop: (code: number, why: string) => never, maxMs: number, what = "every process"): Timer {
  process.once("SIGINT", () => stop(130, `interrupted: stopping ${what}`));
  process.once("SIGTERM", () => stop(143, `terminated: stopping ${what}`));
  return setTimeout(() => stop(1, `run exceeded ${maxMs / 60_000} min: stopping ${what}`), maxMs);
}
