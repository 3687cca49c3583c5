/**
 * The read-your-writes floor (src/client/executed-floor.ts): the (f+1)-th highest `at` of
 * the answers, counted with the f of the group the client follows now, not the cluster
 * file's (once the group raised f, f_file+1 faulty replicas must not set it).
 */
import { expect, test } from "bun:test";
import { FitbClient } from "../../src/client/client.ts";
import { ExecutedFloor } from "../../src/client/executed-floor.ts";
import type { AgreedGroup } from "../../src/client/membership-follow.ts";
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
  const floor = new ExecutedFloor(() => f);
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
