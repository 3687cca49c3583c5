/**
 * Shared pieces of the storage unit tests: a temporary data directory, a log that keeps
 * its lines, a channel state machine with small bounds, real signed requests, and a
 * minimal executor that applies decided requests to the machine the way the replica does.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { adminOp, buildRequest, pubOp } from "../../src/client/request.ts";
import { ChannelMachine } from "../../src/core/channels/machine.ts";
import type { ChannelsConfig } from "../../src/core/channels/config.ts";
import { batchBytes, type ClientRequest } from "../../src/core/ordering/messages.ts";
import type { PersistedRecord } from "../../src/core/ordering/types.ts";
import { toHex } from "../../src/crypto/encoding.ts";
import { sha256 } from "../../src/crypto/hash.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import type { Log } from "../../src/replica/log.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { ReplicaStorage } from "../../src/replica/storage/index.ts";
import type { AdminCmd } from "../../wire/schemas.ts";
import { decodeRequestBody } from "../../wire/schemas.ts";
import { FRAME_BYTES_MAX } from "../../wire/types.ts";

export const MACHINE_CONFIG: ChannelsConfig = {
  channelsMax: 8,
  eventBytesMax: 1024,
  requestBytesMax: 64 * 1024,
  requestEventsMax: 64,
  retention: { events: 10_000, bytes: 1024 * 1024, ageMs: 0 },
};

/** The digest the ordering core gives `batch` (its records name their batch by it). */
export function batchDigest(batch: readonly ClientRequest[]): Uint8Array {
  return sha256(batchBytes(batch));
}

export function tempDir(prefix = "fitb-storage-"): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface TestLog extends Log {
  readonly lines: { level: string; msg: string; fields: Record<string, unknown> }[];
}

export function testLog(): TestLog {
  const lines: TestLog["lines"] = [];
  const at =
    (level: string) =>
    (msg: string, fields: Record<string, unknown> = {}) =>
      void lines.push({ level, msg, fields });
  return { lines, debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

export function newMachine(): ChannelMachine {
  return new ChannelMachine({ hash: sha256, config: MACHINE_CONFIG });
}

export function openStorage(dir: string, log: Log = testLog(), metrics = new Metrics()): ReplicaStorage {
  return ReplicaStorage.open({ dir, sync: "full", cluster: "unit", replica: 0, log, metrics });
}

/** A client that numbers and signs its requests, one sequence space per tag (as the replica names them). */
export class TestClient {
  readonly key = SigningKey.generate();
  private readonly next = new Map<string, number>();

  get hex(): string {
    return toHex(this.key.publicKey);
  }

  admin(cmd: AdminCmd): ClientRequest {
    return this.build("!admin", adminOp(cmd), 1);
  }

  pub(tag: string, events: string[]): ClientRequest {
    return this.build(
      tag,
      pubOp(
        tag,
        events.map((e) => new TextEncoder().encode(e)),
      ),
      events.length,
    );
  }

  private build(space: string, op: Parameters<typeof buildRequest>[1]["op"], span: number): ClientRequest {
    const seq = this.next.get(space) ?? 1;
    this.next.set(space, seq + span);
    const built = buildRequest(this.key, { seq, ts: 1_700_000_000_000 + seq, op }, FRAME_BYTES_MAX);
    return { client: `${this.hex}:${space}`, seq, span, body: built.body, sig: built.sig };
  }
}

/** Applies decided requests to the machine the way the replica executes them. */
export function execute(machine: ChannelMachine, requests: readonly ClientRequest[]): void {
  for (const req of requests) {
    const decoded = decodeRequestBody(req.body);
    if (!decoded.ok) throw new Error(decoded.error.reason);
    const request = decoded.request;
    if (request.op.t === "admin") machine.applyAdmin(request.op.cmd);
    else machine.applyOrderedPublish({ body: req.body, sig: req.sig }, request, request.ts);
  }
}

/** Every event payload of a total-order channel, in channel order. */
export function payloads(machine: ChannelMachine, tag: string): string[] {
  const out: string[] = [];
  let from = machine.channelInfo(tag)?.oldestSeq ?? 1;
  for (;;) {
    const read = machine.readFrom(tag, from, 1024);
    if (!read.ok || read.batches.length === 0) return out;
    for (const batch of read.batches) {
      const decoded = decodeRequestBody(batch.body);
      if (decoded.ok && decoded.request.op.t === "pub") for (const e of decoded.request.op.events) out.push(new TextDecoder().decode(e));
      from = batch.firstSeq + batch.count;
    }
  }
}

/** A `decided` record of seq `seq` whose batch is one publish of `client` to a.b. */
export function decidedRecord(client: TestClient, seq: number, payload = `event ${seq}`): PersistedRecord {
  const batch = [client.pub("a.b", [payload])];
  return { t: "decided", seq, view: 0, digest: batchDigest(batch), batch, commits: [] };
}
