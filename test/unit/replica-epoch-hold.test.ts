/**
 * Messages of the next membership epoch are held at a replica only while its own switch is
 * pending (src/replica/ordering-driver.ts): otherwise a member could fill every correct
 * replica's memory with messages for an epoch that is not coming. A real driver, core,
 * store and mesh (not started), fed peer messages by hand.
 */
import { afterAll, expect, test } from "bun:test";
import { encodeEnvelope } from "../../src/replica/peer-messages.ts";
import { driverFixture } from "./driver-fixture.ts";
import { tempDir } from "./storage-fixtures.ts";

const temp = tempDir("fitb-epoch-hold-");
afterAll(() => temp.remove());

test("with no switch pending, next-epoch messages are refused and counted, not held", () => {
  const { driver, metrics, log, close, keyOf } = driverFixture(temp.dir, 41_000, { membership: true });
  try {
    // Replica 3 sends large messages tagged with the next epoch while no change is decided.
    const junk = encodeEnvelope("ordering", new Uint8Array(64 * 1024), 1);
    for (let i = 0; i < 100; i++) driver.onPeerMessage(3, junk, keyOf(3));
    expect(metrics.get("peer_messages_other_epoch_total")).toBe(100);
    expect(log.lines.some((l) => l.msg === "peer message of another epoch refused")).toBe(true);
  } finally {
    close();
  }
});
