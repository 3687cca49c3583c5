/**
 * Subscription ids are unique per connection across system (`$sys.*`) and channel
 * subscriptions (wire/PROTOCOL.md 4.10), on a real replica: a SUBSCRIBE whose id the other
 * kind holds is refused BAD_REQUEST like any duplicate, and an UNSUBSCRIBE ends the one
 * subscription that holds its id, which frees it.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import type { Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { waitFor } from "../helpers/wait.ts";
import { rawSession, startClusterWithChannels } from "./client-util.ts";
import type { TestCluster } from "./harness.ts";

let cluster: TestCluster;

beforeAll(async () => {
  cluster = await startClusterWithChannels();
}, 60_000);

afterAll(async () => {
  await cluster?.stop();
});

/** Each SUB_OK and SUB_END received, as `sub SUB_OK` or `sub CODE reason`. */
function answers(frames: readonly Frame[]): string[] {
  return frames.flatMap((f) => {
    if (f.type === FrameType.SUB_OK) return [`${f.body.sub} SUB_OK`];
    if (f.type === FrameType.SUB_END) return [`${f.body.sub} ${f.body.code} ${f.body.reason}`];
    return [];
  });
}

describe("one id space per connection for $sys and channel subscriptions", () => {
  test("a SUBSCRIBE whose id the other kind holds is BAD_REQUEST; UNSUBSCRIBE ends the one holding it, and the id is free again", async () => {
    const key = loadSigningKeyFile(cluster.clientKey).key;
    const frames: Frame[] = [];
    const session = rawSession(cluster, 0, key, frames);
    session.start();
    try {
      await waitFor("a session with replica 0", () => session.isReady);
      const answered = async (count: number, what: string): Promise<string[]> => {
        await waitFor(
          what,
          () => answers(frames).length >= count,
          undefined,
          () => answers(frames).join("; "),
        );
        return answers(frames);
      };
      // A system subscription holds 1: a channel SUBSCRIBE with 1 is refused.
      session.send({ type: FrameType.SUBSCRIBE, body: { sub: 1, tag: "$sys.events" } });
      await answered(1, "SUB_OK for $sys.events");
      session.send({ type: FrameType.SUBSCRIBE, body: { sub: 1, tag: "net.links" } });
      // A channel subscription holds 2: a system SUBSCRIBE with 2 is refused.
      session.send({ type: FrameType.SUBSCRIBE, body: { sub: 2, tag: "net.links" } });
      await answered(3, "answers to net.links with 1 and 2");
      session.send({ type: FrameType.SUBSCRIBE, body: { sub: 2, tag: "$sys.replica.0" } });
      expect(await answered(4, "the answer to $sys.replica.0 with 2")).toEqual([
        "1 SUB_OK",
        "1 BAD_REQUEST subscription id 1 is already in use",
        "2 SUB_OK",
        "2 BAD_REQUEST subscription id 2 is already in use",
      ]);
      // UNSUBSCRIBE 1 ends the system subscription; 1 may then name a channel subscription.
      session.send({ type: FrameType.UNSUBSCRIBE, body: { sub: 1 } });
      await answered(5, "UNSUBSCRIBED for 1");
      session.send({ type: FrameType.SUBSCRIBE, body: { sub: 1, tag: "net.links" } });
      expect((await answered(6, "SUB_OK for net.links with 1")).slice(4)).toEqual(["1 UNSUBSCRIBED unsubscribed", "1 SUB_OK"]);
    } finally {
      session.close();
    }
  }, 60_000);
});
