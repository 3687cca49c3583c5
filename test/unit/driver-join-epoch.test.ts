/**
 * A replica joining a running group (src/replica/ordering-driver.ts `recoveredEpoch`) stores
 * the join epoch's start before its core can vote there, so a restart resumes that epoch
 * from its own records (or, when it stopped before it got the state, refuses to run an
 * older epoch's group on them). A real driver, core, store and mesh (not started).
 */
import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { Metrics } from "../../src/replica/metrics.ts";
import { genesisMembership } from "../../src/replica/epochs.ts";
import { coreConfigFor, type JoinEpoch } from "../../src/replica/ordering-driver.ts";
import { ReplicaStorage } from "../../src/replica/storage/index.ts";
import { driverFixture } from "./driver-fixture.ts";
import { tempDir, testLog } from "./storage-fixtures.ts";

const temp = tempDir("fitb-join-epoch-");
afterAll(() => temp.remove());

test("a joining replica stores its epoch's start; restarted without the group before it got the state, it refuses to run the genesis group", () => {
  const first = driverFixture(temp.dir, 42_000, { membership: true });
  const joinEpoch: JoinEpoch = {
    membership: { ...genesisMembership(first.config), epoch: 3 },
    start: { seq: 4 * coreConfigFor(first.config, 0).checkpointInterval, digest: new Uint8Array(32).fill(7) },
  };
  first.close();

  // Started as a joiner of epoch 3 on this (older) data directory.
  const joiner = driverFixture(temp.dir, 42_000, { membership: true, join: joinEpoch, overwrite: true });
  expect(joiner.driver.epoch.epoch).toBe(3);
  expect(joiner.log.lines.some((l) => l.msg === "joining the group: starting in its current epoch, fetching the state")).toBe(true);
  joiner.close();

  const storage = ReplicaStorage.open({
    dir: join(temp.dir, "data"),
    sync: "normal",
    cluster: joiner.config.name,
    replica: 0,
    log: testLog(),
    metrics: new Metrics(),
  });
  try {
    expect(storage.epochStart()).toEqual({ epoch: 3, ...joinEpoch.start });
  } finally {
    storage.close();
  }

  // Its machine is still at genesis: started without the join (from the file alone), it must not run epoch 0's core.
  expect(() => driverFixture(temp.dir, 42_000, { membership: true, overwrite: true })).toThrow(
    "the data directory stopped while joining epoch 3 before it got the state",
  );
});
