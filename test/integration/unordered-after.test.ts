/**
 * Read-your-writes on an unordered channel (wire/PROTOCOL.md 6.3): a publish carrying
 * `after` is judged by a replica only once it has executed that decided seq, whichever way
 * the answer goes. Stored, an unordered event is stored for good; a replica behind a
 * revocation the publisher's client has seen must not store it from its older state.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { loadSigningKeyFile } from "../../src/crypto/keys.ts";
import type { FitbClient } from "../../src/client/client.ts";
import { waitFor } from "../helpers/wait.ts";
import { clientFor, publishFrame, rawSession } from "./client-util.ts";
import { startCluster, type TestCluster } from "./harness.ts";

let cluster: TestCluster;
let admin: FitbClient;

beforeAll(async () => {
  cluster = await startCluster();
  admin = clientFor(cluster, cluster.adminKey);
  const key = loadSigningKeyFile(cluster.clientKey).key;
  await admin.admin({ t: "create-channel", tag: "net.links", fault: "crash", order: "none", priority: "normal", public: true });
  await admin.admin({ t: "register", tag: "net.links", role: "publisher", key: key.publicKey });
}, 60_000);

afterAll(async () => {
  admin?.close();
  await cluster?.stop();
});

test("an unordered publish sent with `after` the next decided seq waits for it: the revocation decided there refuses it", async () => {
  const key = loadSigningKeyFile(cluster.clientKey).key;
  // Replica 3 is the one judged. Nothing but admin commands is ordered in this group, so
  // once replica 3 has executed everything decided (S), the next decided seq is the
  // revocation below.
  const decided = (await admin.status()).lastDecided ?? 0;
  let executed = 0;
  await waitFor("replica 3 to execute what the group decided", async () => {
    const answer = (await admin.status()).replicas[3]?.answer;
    executed = answer?.ok === true ? answer.value.lastDecided : 0;
    return executed >= decided;
  });
  const frames: Frame[] = [];
  const session = rawSession(cluster, 3, key, frames);
  session.start();
  try {
    await waitFor("a session with replica 3", () => session.isReady);
    // As a client that had seen the revocation at seq S+1 would send it.
    session.send(publishFrame(key, 1, "net.links", "after the revocation", executed + 1));
    const revoked = await admin.admin({ t: "unregister", tag: "net.links", role: "publisher", key: key.publicKey });
    expect(revoked.at).toBe(executed + 1);
    const replies = () => frames.flatMap((frame) => (frame.type === FrameType.REPLY ? [frame.body] : []));
    await waitFor("replica 3's answer", () => replies().length === 1);
    const reply = replies()[0];
    expect(reply?.ok ? "ok" : `${reply?.code} ${reply?.reason}`).toBe("UNAUTHORIZED publisher is not registered on net.links");
  } finally {
    session.close();
  }
}, 60_000);
