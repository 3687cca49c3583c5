/**
 * The read-your-writes floor (src/client/executed-floor.ts): the (f+1)-th highest `at` of
 * the answers, counted with the f of the group the client follows now, not the cluster
 * file's (once the group raised f, f_file+1 faulty replicas must not set it), and only
 * over the answers of its members now (a change that removed faulty replicas and lowered
 * f must not let their answers to requests sent before it set the floor).
 */
import { expect, test } from "bun:test";
import type { Reply } from "../../wire/schemas.ts";
import { FitbClient } from "../../src/client/client.ts";
import { ExecutedFloor } from "../../src/client/executed-floor.ts";
import type { AgreedGroup } from "../../src/client/membership-follow.ts";
import { buildRequest, pubOp } from "../../src/client/request.ts";
import type { RequestOutcome, RequestTracker } from "../../src/client/request-tracker.ts";
import { parseClusterConfig } from "../../src/config/cluster.ts";
import { renderClusterToml } from "../../src/config/init.ts";
import { SigningKey } from "../../src/crypto/keys.ts";

const keys = Array.from({ length: 7 }, () => SigningKey.generate().publicKey);
const HIGH = 1_000_000_000;
/** Two replicas claim a huge executed seq, five an honest one. */
const ats = new Map([
  [0, HIGH],
  [1, HIGH],
  [2, 500],
  [3, 500],
  [4, 500],
  [5, 400],
  [6, 400],
]);

test("the floor counts with the f it reads at each answer", () => {
  let f = 1;
  const floor = new ExecutedFloor({
    get f() {
      return f;
    },
    has: () => true,
  });
  f = 2;
  floor.observeAts(ats);
  expect(floor.value).toBe(500);
  f = 1;
  floor.observeAts(ats);
  expect(floor.value).toBe(HIGH);
});

test("a client on an f=1 file that follows a group with f=2 needs three replicas to raise its floor, not two", () => {
  const text = renderClusterToml({
    name: "t",
    f: 1,
    replicas: [0, 1, 2, 3].map((id) => ({ id, host: "127.0.0.1", port: 7100 + id, publicKey: keys[id] as Uint8Array })),
    adminKeys: [SigningKey.generate().publicKey],
    clientKeys: [],
  });
  const parsed = parseClusterConfig(text, "/nonexistent/cluster.toml");
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
  const client = new FitbClient({ config: parsed.config, key: SigningKey.generate() });
  try {
    // The path a `members` read takes (refreshMembership -> takeGroup), without connections started.
    const agreed: AgreedGroup = {
      group: {
        epoch: 3,
        f: 2,
        members: keys.map((key, id) => ({ id, host: "127.0.0.1", port: 7100 + id, peerPort: null, key })),
        digest: new Uint8Array(32),
      },
      dissent: new Map(),
    };
    (client as unknown as { takeGroup(agreed: AgreedGroup): void }).takeGroup(agreed);
    expect(client.f).toBe(2);
    (client as unknown as { floor: ExecutedFloor }).floor.observeAts(ats);
    expect(client.executedFloor).toBe(500);
  } finally {
    client.close();
  }
});

test("answers of replicas that are not members now do not count, and f is at least the f the answers were asked with", () => {
  const members = new Set([0, 1, 2, 3, 4]);
  const floor = new ExecutedFloor({ f: 1, has: (id) => members.has(id) });
  // Replicas 0 and 1 (members) and 5 and 6 (removed) say HIGH: with f=1 over every answer, HIGH.
  floor.observeAts(
    new Map([
      [5, HIGH],
      [6, HIGH],
      [2, 500],
      [3, 500],
    ]),
  );
  expect(floor.value).toBe(500);
  // Sent while f was 2: three members must reach a seq, not two.
  floor.observeAts(
    new Map([
      [0, 800],
      [1, 800],
      [2, 600],
      [3, 600],
    ]),
    2,
  );
  expect(floor.value).toBe(600);
  floor.observeAts(
    new Map([
      [0, 800],
      [1, 800],
      [2, 600],
      [3, 600],
    ]),
  );
  expect(floor.value).toBe(800);
  // Fewer than f+1 members answered: nothing.
  floor.observeAts(
    new Map([
      [0, 900],
      [5, 900],
      [6, 900],
    ]),
  );
  expect(floor.value).toBe(800);
});

/** A client on a 7-replica f=2 file, not started (the path replies and a `members` read take, without connections). */
function sevenReplicaClient(): FitbClient {
  const text = renderClusterToml({
    name: "t",
    f: 2,
    replicas: keys.map((key, id) => ({ id, host: "127.0.0.1", port: 7100 + id, publicKey: key })),
    adminKeys: [SigningKey.generate().publicKey],
    clientKeys: [],
  });
  const parsed = parseClusterConfig(text, "/nonexistent/cluster.toml");
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.errors));
  return new FitbClient({ config: parsed.config, key: SigningKey.generate() });
}

for (const how of ["removed", "replaced by new keys"] as const) {
  test(`two replicas ${how} in the change that lowered f to 1 cannot raise the floor with answers to a request sent before it`, async () => {
    const client = sevenReplicaClient();
    const internals = client as unknown as { requests: RequestTracker; takeGroup(agreed: AgreedGroup): void };
    try {
      const built = buildRequest(SigningKey.generate(), { seq: 1, ts: 1, op: pubOp("net.links", [new Uint8Array([1])]) }, 1 << 20);
      const settled = internals.requests.track(built, "byzantine/none", "publish to net.links");
      const reply = (replica: number, at: number): Reply => ({
        seq: 1,
        replica,
        d: built.digest,
        ok: true,
        res: { t: "pub", tag: "net.links", span: 1, first: 1 },
        at,
      });
      // Replicas 5 and 6 (faulty) claim a huge executed seq before the client follows the new group.
      internals.requests.onReply(5, reply(5, HIGH));
      internals.requests.onReply(6, reply(6, HIGH));
      internals.requests.onReply(0, reply(0, 500));
      const newKeys = keys.map((key, id) => (id >= 5 && how !== "removed" ? SigningKey.generate().publicKey : key));
      const ids = how === "removed" ? [0, 1, 2, 3, 4] : [0, 1, 2, 3, 4, 5, 6];
      internals.takeGroup({
        group: {
          epoch: 4,
          f: 1,
          members: ids.map((id) => ({ id, host: "127.0.0.1", port: 7100 + id, peerPort: null, key: newKeys[id] as Uint8Array })),
          digest: new Uint8Array(32),
        },
        dissent: new Map(),
      });
      expect(client.f).toBe(1);
      // 2f+1 = 5 stored answers (the f of the group the request went to) settle it; those of
      // 5 and 6, who left, were taken back (ReplyVoter.withdraw), so five members answer.
      for (const replica of [1, 2, 3, 4]) internals.requests.onReply(replica, reply(replica, 500));
      const outcome: RequestOutcome = await settled;
      expect(outcome.ok).toBe(true);
      expect(client.executedFloor).toBe(500);
    } finally {
      client.close();
    }
  });
}
