/**
 * The ordering core's `peerFlooding` advisory is acted on: the driver hands it to the
 * runtime, and the mesh mutes the peer (counted by peer and reason, its handshakes refused
 * until the mute ends). A real driver, core, store and mesh (not started), fed peer
 * messages by hand.
 */
import { afterAll, expect, test } from "bun:test";
import { encodeEnvelope } from "../../src/replica/peer-messages.ts";
import { waitFor } from "../helpers/wait.ts";
import { driverFixture } from "./driver-fixture.ts";
import { tempDir } from "./storage-fixtures.ts";

const temp = tempDir("fitb-flooding-");
afterAll(() => temp.remove());

test("a peer the ordering core finds flooding is muted for PEER_FLOOD_MUTE_MS, counted and logged", async () => {
  const { driver, mesh, metrics, log, close, keyOf } = driverFixture(temp.dir, 40_000);
  driver.start();
  try {
    // Replica 3 says "I suspect the leader of view 0" over and over: valid, harmless one at
    // a time, and far more than any other peer sends. The core's monitor flags it at the
    // end of its window.
    const suspect = encodeEnvelope("ordering", { t: "SUSPECT", view: 0 });
    const flood = setInterval(() => {
      for (let i = 0; i < 200; i++) driver.onPeerMessage(3, suspect, keyOf(3));
    }, 20);
    try {
      await waitFor("replica 3 to be muted", () => mesh.isMuted(3), 30_000);
    } finally {
      clearInterval(flood);
    }
    expect(metrics.peerMuted.with("3", "flooding").value).toBe(1);
    expect(metrics.get("peer_flooding_total")).toBeGreaterThanOrEqual(1);
    expect(mesh.isMuted(1)).toBe(false);
    const line = log.lines.find((l) => l.msg.startsWith("peer muted"));
    expect(line?.fields).toMatchObject({ peer: 3, ms: 5_000, address: "127.0.0.1" });
    expect(String(line?.fields.reason)).toStartWith("flooding: ");
  } finally {
    close();
  }
}, 60_000);
