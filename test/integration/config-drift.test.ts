/**
 * Config drift: replicas execute with their own copy of the cluster file, so one whose
 * shared sections differ (limits, retention, admin or client keys, the group, and the
 * first group's hosts and ports while that group is in use) is refused by its peers at
 * the handshake, and both sides say which sections differ.
 */
import { afterAll, expect, test } from "bun:test";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { CONFIG_SECTIONS, configDifferences, configDigests, withoutAddresses } from "../../src/config/digest.ts";
import { requireClusterConfig } from "../../src/config/cluster.ts";
import { waitFor } from "../helpers/wait.ts";
import { BUN, logTail, MAIN, startCluster, type TestCluster } from "./harness.ts";

const ADDRESSES = CONFIG_SECTIONS.find((section) => section.key === "addrs")?.name as string;
let cluster: TestCluster | null = null;
let drifted: Subprocess | null = null;

afterAll(async () => {
  drifted?.kill("SIGKILL");
  await drifted?.exited;
  await cluster?.stop();
});

test("the digests name each shared section that differs, the first group's hosts and ports among them", async () => {
  cluster = await startCluster({ start: false });
  const original = requireClusterConfig(cluster.configPath);
  const text = readFileSync(cluster.configPath, "utf8");
  const otherPath = join(cluster.dir, "other.toml");
  writeFileSync(
    otherPath,
    text.replace(/^events_max = \d+/m, "events_max = 1234").replace(/^event_bytes_max = \d+/m, "event_bytes_max = 1000"),
  );
  const other = requireClusterConfig(otherPath);
  expect(configDifferences(configDigests(original), configDigests(other))).toEqual(["[limits]", "[retention]"]);
  // One replica's host written otherwise: the same machine, but another group at the first
  // membership change, which builds the group from each replica's own file.
  const movedPath = join(cluster.dir, "moved.toml");
  writeFileSync(movedPath, text.replace(/host = "127\.0\.0\.1"/, 'host = "localhost"'));
  const moved = configDigests(requireClusterConfig(movedPath));
  expect(configDifferences(configDigests(original), moved)).toEqual([ADDRESSES]);
  // Once the group changed, the addresses are replicated state: not sent, not compared.
  expect(configDifferences(withoutAddresses(configDigests(original)), moved)).toEqual([]);
  expect(configDifferences(configDigests(original), withoutAddresses(moved))).toEqual([]);
});

test("a replica started with other [retention] and [limits] is refused by every peer, which says what differs", async () => {
  const running = cluster as TestCluster;
  for (let id = 0; id < 3; id++) running.start(id);
  const output: string[] = [];
  drifted = Bun.spawn([BUN, MAIN, "replica", "--config", join(running.dir, "other.toml"), "--id", "3"], { stdout: "pipe", stderr: "pipe" });
  void (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of drifted.stdout as ReadableStream<Uint8Array>) output.push(decoder.decode(chunk));
  })();
  for (let id = 0; id < 3; id++) {
    await waitFor(`replica ${id} to refuse replica 3`, () => {
      const log = logTail(running, id, 400);
      return log.includes("its cluster file differs") && log.includes("[limits]; [retention]");
    });
  }
  await waitFor("replica 3 to report the refusal", () => output.join("").includes("cluster file differs from replica"));
  expect(output.join("")).toContain("[limits]; [retention]");
  // The three that agree form a group of their own and link up.
  await waitFor("replicas 0..2 to link up", () => [0, 1, 2].every((id) => logTail(running, id, 400).split("peer link up").length - 1 >= 2));
});

test("a replica whose file writes a first-group host otherwise is refused while the group is the first", async () => {
  const running = cluster as TestCluster;
  drifted?.kill("SIGKILL");
  await drifted?.exited;
  // The last test's replica 3 wrote its data directory under other [limits] and [retention].
  rmSync(join(running.dir, "data", "replica-3"), { recursive: true, force: true });
  const output: string[] = [];
  drifted = Bun.spawn([BUN, MAIN, "replica", "--config", join(running.dir, "moved.toml"), "--id", "3"], { stdout: "pipe", stderr: "pipe" });
  void (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of drifted.stdout as ReadableStream<Uint8Array>) output.push(decoder.decode(chunk));
  })();
  await waitFor("replica 3 to report the refusal of its addresses", () => output.join("").includes(ADDRESSES));
  for (let id = 0; id < 3; id++) {
    await waitFor(`replica ${id} to refuse replica 3's addresses`, () => logTail(running, id, 400).includes(ADDRESSES));
  }
});
