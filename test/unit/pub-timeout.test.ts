// What `fitb pub` says on standard error after publishes timed out
// (src/cli/commands/pub-timeout.ts): which quorum was missing and why, the "not now"
// refusals (a rate limit, load) the replicas answered meanwhile, and how to check.
import { describe, expect, test } from "bun:test";
import { type TimeoutContext, timeoutHint } from "../../src/cli/commands/pub-timeout.ts";
import { formatPublicKey, SigningKey } from "../../src/crypto/keys.ts";
import type { ErrorCode } from "../../wire/types.ts";

const key = SigningKey.generate();

function hint(ready: number[], refusals: [ErrorCode, number][] = [], timedOut = 1): string[] {
  const client: TimeoutContext["client"] = {
    f: 1,
    n: 4,
    readyReplicas: () => ready,
    publicKey: key.publicKey,
    transientRefusals: new Map(refusals),
  };
  return timeoutHint({ client, flags: { configPath: "c.toml", keyPath: "p.key" }, tag: "sec.alerts", timedOut, startSeq: 7 });
}

describe("fitb pub after a timeout", () => {
  test("replicas out of reach: how many were reachable, and the quorums", () => {
    const lines = hint([0, 1]);
    expect(lines[0]).toBe("1 event timed out without the acknowledgement the channel needs; it may still be stored or ordered.");
    expect(lines[1]).toStartWith(
      "Why: 2 of 4 replicas were reachable at the end; a total-order channel is ordered only while 3 (2f+1) agree",
    );
    expect(lines.some((line) => line.startsWith("Meanwhile:"))).toBe(false);
    expect(lines).toContain(
      `Check: fitb sub --config c.toml --key p.key sec.alerts --from 7 --format '{seq} {time} {publisher} {payload}'`,
    );
    expect(lines.join("\n")).toContain(formatPublicKey(key.publicKey));
    // The publisher's key may not read a channel that is not public: the hint says which key to give.
    expect(lines.join("\n")).toContain("on a channel that is not public, give --key a key registered to subscribe to it");
  });

  test("every replica reachable: the missing answers are the replicas', not the network's", () => {
    const lines = hint([0, 1, 2, 3], [], 3);
    expect(lines[0]).toStartWith("3 events timed out");
    expect(lines[1]).toStartWith(
      'Why: all 4 replicas were reachable at the end, so those that did not acknowledge were slow, refused "not now" or answered otherwise',
    );
    expect(lines[1]).not.toContain("4 of 4 replicas were reachable");
  });

  test("RATE_LIMITED and OVERLOADED refusals retried meanwhile are named, with what to look at", () => {
    const lines = hint(
      [0, 1, 2, 3],
      [
        ["RATE_LIMITED", 120],
        ["OVERLOADED", 1],
        ["OUT_OF_ORDER", 5],
      ],
    );
    const meanwhile = lines.find((line) => line.startsWith("Meanwhile:"));
    expect(meanwhile).toBe(
      "Meanwhile: replicas refused publishes RATE_LIMITED 120 times (over a rate limit: the key's quota, 'fitb admin ... list-quotas', or the cluster's limits) and OVERLOADED once (replicas shedding load), which the client retried until each publish's deadline.",
    );
    // Before the check, after the why.
    expect(lines.indexOf(meanwhile as string)).toBe(2);
  });
});
