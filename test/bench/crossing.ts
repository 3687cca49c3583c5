/**
 * What handing byte views to a thread costs the side that hands them over (run on purpose,
 * not part of `npm test`):
 *
 *   npx bun test/bench/crossing.ts [--views N] [--rounds R] [--json] [--help]
 *
 * For each size, N request-like objects (a client, a seq, a body of that size) go to a
 * thread in one `postMessage` and come back in its answer, as a request goes to the
 * ordering thread and comes back in its proposal and decision, R times, two ways: as they
 * are (a structured clone copies each body into the message and out again, both ways),
 * and through `compacted` (src/replica/ordering-host.ts), which copies a body of
 * SHARED_BYTES_MIN or more into a SharedArrayBuffer of its own first, so that both
 * messages carry a reference. It prints, per view, the sender's time in handing it over
 * and the main thread's CPU for the round trip (Linux: /proc/self/task/PID/stat, in
 * clock ticks, so give it enough rounds): where the two ways cross is where
 * SHARED_BYTES_MIN belongs. A benchmark: it prints figures and judges nothing.
 */
import { readFileSync } from "node:fs";
import { compacted, SHARED_BYTES_MIN } from "../../src/replica/ordering-host.ts";

const SIZES = [256, 1024, SHARED_BYTES_MIN, 4096, 16_384, 65_536];

interface Way {
  /** The sender's µs per view in `postMessage` (and `compacted`). */
  readonly sendUs: number;
  /** The main thread's CPU µs per view over the round trip, answer included. */
  readonly roundTripCpuUs: number;
}

interface Row {
  readonly bytes: number;
  readonly cloned: Way;
  readonly shared: Way;
}

/** Clock ticks a second of /proc's CPU times (USER_HZ, 100 on Linux). */
const TICKS_PER_S = 100;

/** The main thread's CPU time so far, in µs (its utime and stime in /proc). */
function mainThreadCpuUs(): number {
  const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, "utf8");
  // The fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1_000_000) / TICKS_PER_S;
}

function usage(): never {
  console.log(`usage: npx bun test/bench/crossing.ts [--views N] [--rounds R] [--json] [--help]

Hands N request-like objects with bodies of ${SIZES.join(", ")} bytes to a thread, which
hands them back, R times each, cloned as they are and through compacted (bodies of
${SHARED_BYTES_MIN} bytes or more copied into shared memory first), and prints per view the
sender's µs in handing them over and the main thread's CPU µs for the round trip.
  --views N    objects per message (default 500, 1..100000)
  --rounds R   messages per size and way (default 200, 1..100000)
  --json       one JSON array instead of the table`);
  process.exit(0);
}

function intArg(args: string[], name: string, fallback: number): number {
  const at = args.indexOf(name);
  if (at < 0) return fallback;
  const value = Number(args[at + 1]);
  if (!Number.isInteger(value) || value < 1 || value > 100_000) {
    console.error(`crossing: ${name} takes a whole number from 1 to 100000, not ${JSON.stringify(args[at + 1] ?? "")}`);
    process.exit(2);
  }
  return value;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args.includes("--help")) usage();
  const views = intArg(args, "--views", 500);
  const rounds = intArg(args, "--rounds", 200);
  // The thread reads one byte of every body, as the ordering thread reads what it is handed.
  const source = "self.onmessage = (m) => { let s = 0; for (const x of m.data) s += x.body[0]; self.postMessage(m.data); };";
  const worker = new Worker(URL.createObjectURL(new Blob([source], { type: "application/javascript" })));
  const handOver = (data: unknown): Promise<void> =>
    new Promise((resolve) => {
      worker.onmessage = () => resolve();
      worker.postMessage(data);
    });
  const rows: Row[] = [];
  try {
    for (const bytes of SIZES) {
      const bodies = Array.from({ length: views }, (_, i) => new Uint8Array(bytes).fill(i & 0xff));
      const cost = async (shared: boolean): Promise<Way> => {
        let spentMs = 0;
        const cpuBefore = mainThreadCpuUs();
        for (let round = 0; round < rounds; round++) {
          const started = performance.now();
          const message = bodies.map((body, seq) => ({ client: "bench", seq, body }));
          const done = handOver(shared ? compacted(message) : message);
          spentMs += performance.now() - started;
          await done;
        }
        const perView = rounds * views;
        return { sendUs: (spentMs * 1000) / perView, roundTripCpuUs: (mainThreadCpuUs() - cpuBefore) / perView };
      };
      // Each way once unmeasured first: the engine compiles both paths before either counts.
      await cost(false);
      await cost(true);
      rows.push({ bytes, cloned: await cost(false), shared: await cost(true) });
      if (!args.includes("--json")) console.error(`crossing: ${bytes} bytes done`);
    }
  } finally {
    await worker.terminate();
  }
  if (args.includes("--json")) {
    console.log(JSON.stringify(rows));
    return;
  }
  console.log(`µs per view, ${views} views a message, ${rounds} messages each way (SHARED_BYTES_MIN ${SHARED_BYTES_MIN})`);
  console.log("| body bytes | hand-over, cloned | hand-over, compacted | round trip CPU, cloned | round trip CPU, compacted |");
  console.log("|--:|--:|--:|--:|--:|");
  for (const { bytes, cloned, shared } of rows) {
    const cells = [cloned.sendUs, shared.sendUs, cloned.roundTripCpuUs, shared.roundTripCpuUs].map((us) => us.toFixed(2));
    console.log(`| ${bytes} | ${cells.join(" | ")} |`);
  }
}

await main();
