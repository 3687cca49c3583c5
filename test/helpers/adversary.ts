/**
 * Starts the attack harness's compromised replica (test/attack/adversary-replica.ts) in a
 * test cluster in place of replica `id`, attacking from the start, and waits until it and
 * the correct replicas listen (a client gives up at once on refused connections).
 */
import { join } from "node:path";
import type { Subprocess } from "bun";
import { waitFor } from "./wait.ts";
import { BUN, REPO, type TestCluster, waitListening } from "../integration/harness.ts";

export interface Adversary {
  readonly proc: Subprocess<"ignore", "pipe", "pipe">;
  /** Its standard output so far. */
  readonly output: string[];
  stop(): Promise<void>;
}

/** The cluster was started with `start: false`; every replica but `id` is started here. */
export async function startWithAdversary(cluster: TestCluster, id: number, behaviour: string): Promise<Adversary> {
  const correct = [...Array(cluster.n).keys()].filter((r) => r !== id);
  for (const r of correct) cluster.start(r);
  const proc = Bun.spawn(
    [
      BUN,
      join(REPO, "test/attack/adversary-replica.ts"),
      "--config",
      cluster.configPath,
      "--id",
      String(id),
      "--behaviour",
      behaviour,
      "--active",
    ],
    { stdin: "ignore", stdout: "pipe", stderr: "pipe" },
  );
  const output: string[] = [];
  void (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of proc.stdout) output.push(decoder.decode(chunk));
  })();
  await waitListening(cluster, correct);
  await waitFor(
    "the adversary to listen",
    () => output.join("").includes('"msg":"replica started"'),
    20_000,
    () => output.join("").slice(-1_000),
  );
  return {
    proc,
    output,
    async stop() {
      proc.kill("SIGKILL");
      await proc.exited;
    },
  };
}
