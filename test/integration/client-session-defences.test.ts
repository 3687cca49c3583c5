/**
 * What a replica does to one client session is counted and logged with the session's key
 * and address (Replica.pauseSession, Replica.reply): a session whose requests are refused
 * before verification faster than REFUSALS_PER_SECOND past REFUSALS_BURST is not read for a
 * while, and a reply the session's connection has no room for is dropped. Real replicas in
 * this process (the only ones of their clusters that run: nothing here needs ordering).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { initCluster } from "../../src/config/init.ts";
import { loadSigningKeyFile, SigningKey } from "../../src/crypto/keys.ts";
import { QUERIES_PER_KEY_BURST, QUERIES_PER_KEY_PER_SECOND, REFUSALS_BURST } from "../../src/replica/admission.ts";
import { createLog } from "../../src/replica/log.ts";
import { Replica, type ReplicaOptions } from "../../src/replica/replica.ts";
import { FrameType } from "../../wire/types.ts";
import { waitFor } from "../helpers/wait.ts";
import { HandSession } from "../helpers/hand-session.ts";
import type { Op } from "../../wire/schemas.ts";
import { freePortRange } from "./harness.ts";

/** A client session spoken by hand: HELLO, AUTH, then signed publishes to a channel that does not exist. */
class Session extends HandSession {
  /**
   * `count` validly signed requests written at once, answers not awaited: publishes to a
   * channel that does not exist, or (`admin`) admin commands, which a client key may not send.
   */
  publishMany(count: number, admin = false): void {
    const op: Op = admin
      ? { t: "admin", cmd: { t: "destroy-channel", tag: "no.such" } }
      : { t: "pub", tag: "no.such", events: [new Uint8Array(8)] };
    this.writeRequests(Array.from({ length: count }, () => op));
  }

  get replies(): number {
    return this.frames.filter((f) => f.type === FrameType.REPLY).length;
  }
}

const dirs: string[] = [];
const replicas: Replica[] = [];

/** One replica of a fresh 4-replica cluster, started, with its log lines kept. */
function startReplica(extra: Partial<ReplicaOptions>): { replica: Replica; port: number; logLines: string[] } {
  const dir = mkdtempSync(join(tmpdir(), "fitb-session-defences-"));
  dirs.push(dir);
  const base = freePortRange(8);
  const init = initCluster({
    dir,
    replicas: 4,
    host: "127.0.0.1",
    basePort: base,
    peerBasePort: base + 4,
    name: "sessions",
    overwrite: false,
  });
  const logLines: string[] = [];
  const replica = new Replica({
    config: init.config,
    id: 0,
    key: loadSigningKeyFile(init.replicaKeyFiles[0] as string).key,
    log: createLog({}, "warn", (line) => logLines.push(line)),
    dataDir: join(dir, "data-0"),
    ...extra,
  });
  replica.start();
  replicas.push(replica);
  return { replica, port: init.config.replicas[0]?.port as number, logLines };
}

const auditLines = (logLines: string[], kind: string) =>
  logLines.filter((line) => line.includes(`"audit":"${kind}"`)).map((line) => JSON.parse(line) as Record<string, unknown>);

afterAll(() => {
  for (const replica of replicas) replica.stop();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe("client session defences are counted and logged", () => {
  test("a session drawing refusals too fast is paused: fitb_client_sessions_paused_total and a line with its key and address", async () => {
    const { replica, port, logLines } = startReplica({});
    const session = new Session(port, SigningKey.generate());
    await session.handshake();
    // Far past the burst, written at once: refused before verification (not an admin key) faster than the refill.
    session.publishMany(REFUSALS_BURST * 2, true);
    await waitFor("the session paused", () => replica.metrics.get("client_sessions_paused_total") >= 1, 30_000);
    await waitFor("its audit line", () => auditLines(logLines, "client-paused").length >= 1, 10_000);
    const [line] = auditLines(logLines, "client-paused");
    expect(line).toMatchObject({
      key: expect.stringMatching(/^ed25519:/),
      address: "127.0.0.1",
      pauseMs: expect.any(Number),
      reason: expect.stringMatching(/refusals a second.*the last: /),
    });
    // The refusals before the pause were answered; the pause held the rest back.
    expect(session.replies).toBeGreaterThanOrEqual(REFUSALS_BURST);
    session.destroy();
  });

  test("the refusals are counted per key: sessions of one key each under the burst, together over it, are paused", async () => {
    // The allowances' clock held still: nothing refills while the refusals are drawn.
    const { replica, port } = startReplica({ allowanceNow: () => 0 });
    const key = SigningKey.generate();
    const sessions = Array.from({ length: 5 }, () => new Session(port, key));
    for (const session of sessions) await session.handshake();
    // Nine tenths of the burst each: no session alone would be paused, the key is.
    for (const session of sessions) session.publishMany(Math.floor(REFUSALS_BURST * 0.9), true);
    await waitFor("a session of the key paused", () => replica.metrics.get("client_sessions_paused_total") >= 1, 30_000);
    for (const session of sessions) session.destroy();
  });

  test("queries past the key's budget are answered OVERLOADED and counted", async () => {
    // The allowances' clock held still: nothing refills while the queries are answered.
    const { replica, port } = startReplica({ allowanceNow: () => 0 });
    const session = new Session(port, SigningKey.generate());
    await session.handshake();
    const asked = QUERIES_PER_KEY_BURST + 100;
    for (let id = 1; id <= asked; id++) session.send({ type: FrameType.QUERY, body: { id, q: "list-channels" } });
    const answers = () => session.frames.filter((f) => f.type === FrameType.QUERY_REPLY);
    await waitFor("every query answered", () => answers().length === asked, 30_000);
    const refused = answers().filter((f) => f.type === FrameType.QUERY_REPLY && !f.body.ok);
    // The burst went through; the rest were refused.
    expect(refused.length).toBe(100);
    expect(replica.metrics.get("queries_refused_total")).toBe(refused.length);
    for (const f of refused) {
      if (f.type === FrameType.QUERY_REPLY && !f.body.ok) {
        expect([f.body.code, f.body.reason]).toEqual([
          "OVERLOADED",
          `more than ${QUERIES_PER_KEY_PER_SECOND} queries a second with this key`,
        ]);
      }
    }
    session.destroy();
  });

  test("a reply the connection has no room for is dropped: fitb_replies_dropped_total and a line with key, address and reason", async () => {
    // An output budget for all client connections smaller than any REPLY: every reply is dropped.
    const { replica, port, logLines } = startReplica({ serverLimits: { clientOutputBytesMax: 16 } });
    const session = new Session(port, SigningKey.generate());
    await session.handshake();
    session.publishMany(3);
    await waitFor("the replies dropped", () => replica.metrics.get("replies_dropped_total") >= 3, 30_000);
    await waitFor("their audit lines", () => auditLines(logLines, "reply-dropped").length >= 3, 10_000);
    const lines = auditLines(logLines, "reply-dropped");
    expect(lines.map((line) => line.seq)).toEqual([1, 2, 3]);
    for (const line of lines) {
      expect(line).toMatchObject({
        key: expect.stringMatching(/^ed25519:/),
        address: "127.0.0.1",
        reason: expect.stringMatching(/^0 of \d+ bytes wait on the connection, 0 of 16 for all clients$/),
      });
    }
    expect(session.replies).toBe(0);
    session.destroy();
  });
});
