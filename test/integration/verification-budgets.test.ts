/**
 * The replica charges every client request to its key's and its address's verification
 * budget before the signature is checked (admission.ts, Replica.beforeVerify): one over
 * either budget is refused RATE_LIMITED naming the budget, counted, and logged with its
 * key and address. A real replica in this process (the only one of its cluster that runs:
 * nothing here needs ordering), given a gate with budgets of one and two requests a second
 * and a clock that stands still, so that no budget refills while the test runs.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { initCluster } from "../../src/config/init.ts";
import { loadSigningKeyFile, SigningKey } from "../../src/crypto/keys.ts";
import { ClientAdmission } from "../../src/replica/admission.ts";
import { createLog } from "../../src/replica/log.ts";
import { Replica } from "../../src/replica/replica.ts";
import type { Reply } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { HandSession } from "../helpers/hand-session.ts";
import { freePortRange } from "./harness.ts";

/** A client session spoken by hand: HELLO, AUTH, then signed requests one at a time. */
class Session extends HandSession {
  /** A validly signed publish to a channel that does not exist; its REPLY. */
  async publish(): Promise<Reply> {
    this.writeRequests([{ t: "pub", tag: "no.such", events: [new Uint8Array(8)] }]);
    const reply = await this.next(FrameType.REPLY, `the reply to request ${this.seq}`);
    if (reply.type !== FrameType.REPLY) throw new Error("not a REPLY");
    return reply.body;
  }
}

const dir = mkdtempSync(join(tmpdir(), "fitb-budgets-"));
const logLines: string[] = [];
let replica: Replica;
let port: number;

beforeAll(() => {
  const base = freePortRange(8);
  const init = initCluster({
    dir,
    replicas: 4,
    host: "127.0.0.1",
    basePort: base,
    peerBasePort: base + 4,
    name: "budgets",
    overwrite: false,
  });
  const config = init.config;
  port = config.replicas[0]?.port as number;
  const nowMs = Date.now();
  replica = new Replica({
    config,
    id: 0,
    key: loadSigningKeyFile(init.replicaKeyFiles[0] as string).key,
    log: createLog({}, "warn", (line) => logLines.push(line)),
    dataDir: join(dir, "data-0"),
    admission: new ClientAdmission({ keyVerificationsPerSecondMax: 1, addressVerificationsPerSecondMax: 2 }, () => nowMs),
  });
  replica.start();
});

afterAll(() => {
  replica?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe("verification budgets per key and per address", () => {
  test("a key over its budget, then an address over its own with another key, are refused RATE_LIMITED before verification, counted and logged", async () => {
    // Budgets of 1 and 2 a second allow bursts of 2 and 4 (VERIFICATION_BURST_SECONDS).
    const first = new Session(port, SigningKey.generate());
    await first.handshake();
    for (let i = 0; i < 2; i++) expect((await first.publish()).ok).toBe(false);
    const overKey = await first.publish();
    expect(overKey).toMatchObject({ ok: false, code: "RATE_LIMITED" });
    expect(overKey.ok === false && overKey.reason).toMatch(
      /^key ed25519:\S+ is over this replica's budget of 1 signed requests a second per key/,
    );
    // Another key, the same address: its own key budget is whole, the address's has one left.
    const second = new Session(port, SigningKey.generate());
    await second.handshake();
    const passes = await second.publish();
    expect(passes.ok === false && passes.code).not.toBe("RATE_LIMITED");
    const overAddress = await second.publish();
    expect(overAddress).toMatchObject({ ok: false, code: "RATE_LIMITED" });
    expect(overAddress.ok === false && overAddress.reason).toMatch(
      /^address 127\.0\.0\.1 is over this replica's budget of 2 signed requests a second from one address/,
    );
    expect(replica.metrics.get("client_key_budget_refused_total")).toBe(1);
    expect(replica.metrics.get("client_address_budget_refused_total")).toBe(1);
    const limited = logLines.filter((line) => line.includes('"audit":"rate-limited"')).map((line) => JSON.parse(line));
    expect(limited).toEqual([
      expect.objectContaining({
        key: expect.stringMatching(/^ed25519:/),
        address: "127.0.0.1",
        reason: expect.stringContaining("per key"),
      }),
      expect.objectContaining({
        key: expect.stringMatching(/^ed25519:/),
        address: "127.0.0.1",
        reason: expect.stringContaining("from one address"),
      }),
    ]);
    first.destroy();
    second.destroy();
  });
});
