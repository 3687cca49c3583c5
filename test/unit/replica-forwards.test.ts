// A peer's FORWARD keeps only the requests this replica would take from its own clients
// (src/replica/forwards.ts): a lying replica cannot fill the pool with keys it made.
import { expect, test } from "bun:test";
import type { ClientRequest, Forward } from "../../src/core/ordering/messages.ts";
import { admissibleForwards } from "../../src/replica/forwards.ts";

const PUBLISHER = "aa".repeat(32);
const ADMIN = "bb".repeat(32);
const STRANGER = "cc".repeat(32);

function request(client: string): ClientRequest {
  return { client, seq: 1, span: 1, body: new Uint8Array([1]), sig: new Uint8Array(64) };
}

const isPublisher = (tag: string, keyHex: string): boolean => tag === "net.links" && keyHex === PUBLISHER;

test("registered publishers and admin keys pass; keys a replica made up, wrong spaces and names without a space do not", () => {
  const msg: Forward = {
    t: "FORWARD",
    requests: [
      request(`${PUBLISHER}:net.links`),
      request(`${ADMIN}:!admin`),
      request(`${STRANGER}:net.links`),
      request(`${PUBLISHER}:sec.alerts`),
      request(`${STRANGER}:!admin`),
      request(PUBLISHER),
    ],
  };
  const kept = admissibleForwards(msg, new Set([ADMIN]), isPublisher);
  expect(kept.requests.map((r) => r.client)).toEqual([`${PUBLISHER}:net.links`, `${ADMIN}:!admin`]);
});

test("a FORWARD whose requests are all admissible is passed on as it is", () => {
  const msg: Forward = { t: "FORWARD", requests: [request(`${PUBLISHER}:net.links`)] };
  expect(admissibleForwards(msg, new Set(), isPublisher)).toBe(msg);
});
