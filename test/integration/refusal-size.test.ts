// A request refused before its signature is verified was decoded whole (about 3 ms of CPU
// a MiB), so it counts against the key's and the address's allowance of refusals by its
// size (admission.ts REFUSAL_BYTES_PER_UNIT): a key that is not registered on a channel,
// writing large publishes to it, has its session paused after a few, as one writing many
// small ones is. Before, 8 sessions writing refused 4 MiB requests took two thirds of a
// replica's core.
import { afterAll, expect, test } from "bun:test";
import { SigningKey } from "../../src/crypto/keys.ts";
import { REFUSAL_BYTES_PER_UNIT, REFUSALS_BURST } from "../../src/replica/admission.ts";
import type { Op } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { HandSession } from "../helpers/hand-session.ts";
import { waitFor } from "../helpers/wait.ts";
import { startClusterWithChannels } from "./client-util.ts";
import { logTail, type TestCluster } from "./harness.ts";

let cluster: TestCluster | null = null;

afterAll(async () => {
  await cluster?.stop();
});

test("a few large refused publishes pause the session as many small ones would", async () => {
  const running = await startClusterWithChannels();
  cluster = running;
  const session = new HandSession(running.basePort, SigningKey.generate());
  try {
    await session.handshake();
    // 200 publishes of 768 KiB (3 events of 256 KiB) to a channel this key is not registered
    // on (the first refused UNAUTHORIZED, the rest OUT_OF_ORDER behind it, each decoded
    // whole): 12 refusals each, 2,400 in all, past the burst even if the replica took 13 s
    // to refuse them (the allowance refills 100 a second); counted one each, 200 were not.
    const event = new Uint8Array(256 * 1024);
    const count = 200;
    expect(count * Math.ceil((3 * event.length) / REFUSAL_BYTES_PER_UNIT)).toBeGreaterThan(REFUSALS_BURST);
    expect(count).toBeLessThan(REFUSALS_BURST);
    session.writeRequests(Array.from({ length: count }, (): Op => ({ t: "pub", tag: "sec.alerts", events: [event, event, event] })));
    await waitFor("the session paused", () => logTail(running, 0, 200).includes("client session not read for a while"), 30_000);
    const refusals = session.frames.filter((f) => f.type === FrameType.REPLY && !f.body.ok);
    expect(refusals.length).toBeGreaterThan(0);
  } finally {
    session.destroy();
  }
}, 120_000);
