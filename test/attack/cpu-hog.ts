/**
 * A process that uses a set share of one core and nothing else (run by the attack harness,
 * never by `npm test`):
 *
 *   bun test/attack/cpu-hog.ts --percent P [--seconds S]
 *
 * It is the control of an attack row: the adversary of a row runs on the same two cores as
 * the replicas, the bench and its subscriber, so part of what a row loses is CPU the
 * adversary's process took, which on real hosts it would take on its own machine. The
 * harness runs the fault-free workload once more beside this process, asked for the CPU the
 * adversary used; what the workload keeps then is what that much lost CPU alone costs.
 *
 * It tracks its own CPU time (user + system) and spins while it is behind P% of the wall
 * time since it started, sleeping a slot while it is ahead, so it takes what it asks for
 * when the scheduler gives it, as the adversary did, and no more. It prints one JSON line
 * when it is running, and one with the wall and CPU ms it used when it exits after S seconds
 * (default 600); a signal ends it at once.
 */

const SLOT_MS = 5;
const SECONDS_DEFAULT = 600;

export interface HogOptions {
  readonly percent: number;
  readonly seconds: number;
}

export const HOG_USAGE = "usage: bun test/attack/cpu-hog.ts --percent P (1..100) [--seconds S]";

export function parseHogArgs(argv: readonly string[]): HogOptions | string {
  let percent: number | null = null;
  let seconds = SECONDS_DEFAULT;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = Number(argv[i + 1]);
    if (arg === "--percent") {
      if (!Number.isFinite(value) || value < 1 || value > 100) return "--percent: a number in 1..100";
      percent = value;
      i++;
    } else if (arg === "--seconds") {
      if (!Number.isInteger(value) || value < 1 || value > 3_600) return "--seconds: an integer in 1..3600";
      seconds = value;
      i++;
    } else return `unknown argument ${arg}`;
  }
  if (percent === null) return "--percent is missing";
  return { percent, seconds };
}

/** CPU ms this process has used. */
function cpuMs(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1_000;
}

async function main(): Promise<void> {
  const options = parseHogArgs(process.argv.slice(2));
  if (typeof options === "string") {
    console.error(options);
    console.error(HOG_USAGE);
    process.exit(2);
  }
  const startWall = performance.now();
  const startCpu = cpuMs();
  const endWall = startWall + options.seconds * 1_000;
  console.log(JSON.stringify({ msg: "hog running", percent: options.percent }));
  for (;;) {
    const now = performance.now();
    if (now >= endWall) break;
    const owed = ((now - startWall) * options.percent) / 100 - (cpuMs() - startCpu);
    if (owed <= 0) {
      await Bun.sleep(SLOT_MS);
      continue;
    }
    // Spin for at most a slot; the next turn measures the CPU really used (a descheduled
    // stretch of the spin is owed again).
    const until = now + Math.min(owed, SLOT_MS);
    while (performance.now() < until) {
      // busy
    }
  }
  const wallMs = performance.now() - startWall;
  console.log(JSON.stringify({ msg: "hog done", percent: options.percent, wallMs, cpuMs: cpuMs() - startCpu }));
  process.exit(0);
}

if (import.meta.main) await main();
