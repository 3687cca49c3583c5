// Snapshot, digest and restore of the replicated channel state: equal inputs give equal
// bytes on every replica, chunked export and incremental import at any split, structural
// checks on hostile snapshots, and the documented size bound.
import { REQUEST_EVENTS_MAX } from "../../wire/types.ts";
import { describe, expect, test } from "bun:test";
import { sha256 } from "@noble/hashes/sha2.js";
import { decodeCanonical, encodeCanonical, type Canonical } from "../../wire/canonical.ts";
import {
  BATCH_RECORD_OVERHEAD_BYTES_MAX,
  CHANNEL_RECORD_BYTES_MAX,
  ChannelMachine,
  KEYS_PER_CHANNEL_MAX,
  SNAPSHOT_CHUNK_BYTES_MAX,
  SNAPSHOT_RECORD_BYTES_MAX,
  snapshotBytesBound,
  type AdminCmd,
  type ChannelsConfig,
  type Request,
  type SignedRequest,
} from "../../src/core/channels/index.ts";
import { QUOTAS_MAX } from "../../src/core/channels/constants.ts";
import { snapshotRecordItemsMax } from "../../src/core/channels/snapshot.ts";
import { REPLICAS_MAX } from "../../wire/types.ts";

const hash = (bytes: Uint8Array): Uint8Array => sha256(bytes);
const SIG = new Uint8Array(64).fill(7);
const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);

const CONFIG: ChannelsConfig = {
  channelsMax: 8,
  eventBytesMax: 200,
  requestBytesMax: 2000,
  requestEventsMax: 8,
  retention: { events: 20, bytes: 20_000, ageMs: 10_000 },
};

function key(n: number): Uint8Array {
  const k = new Uint8Array(32);
  k[0] = n & 0xff;
  k[1] = n >>> 8;
  k[31] = 0x55;
  return k;
}

function pub(client: Uint8Array, seq: number, tag: string, events: string[], ts = 1): { signed: SignedRequest; request: Request } {
  const evs = events.map(utf8);
  const value = { v: 1, client, seq, span: evs.length, ts, op: { t: "pub", tag, events: evs } } as const;
  return { signed: { body: encodeCanonical({ ...value, op: { ...value.op, events: evs } }), sig: SIG }, request: value };
}

type Step =
  | { admin: AdminCmd }
  | { ordered: [Uint8Array, number, string, string[]]; ts: number }
  | { unordered: [Uint8Array, number, string, string[]]; ts: number }
  | { ageTrim: number };

/** A script that exercises every kind of change: admin, publishes, count and age trims. */
function script(): Step[] {
  const steps: Step[] = [
    { admin: { t: "create-channel", tag: "net.links", fault: "byzantine", order: "total", priority: "high", public: false } },
    { admin: { t: "create-channel", tag: "storage.disks", fault: "crash", order: "total", priority: "low", public: true } },
    { admin: { t: "create-channel", tag: "net.fast", fault: "crash", order: "none", priority: "normal", public: false } },
    { admin: { t: "create-channel", tag: "tmp", fault: "byzantine", order: "none", priority: "critical", public: false } },
    { admin: { t: "destroy-channel", tag: "tmp" } },
  ];
  for (const tag of ["net.links", "storage.disks", "net.fast"]) {
    for (const n of [3, 1, 2]) steps.push({ admin: { t: "register", tag, role: "publisher", key: key(n) } });
    steps.push({ admin: { t: "register", tag, role: "subscriber", key: key(50) } });
  }
  let seq = 1;
  for (let i = 0; i < 30; i++) {
    const events = Array.from({ length: 1 + (i % 3) }, (_, j) => `event ${i}/${j}`);
    const tag = i % 2 === 0 ? "net.links" : "storage.disks";
    steps.push({ ordered: [key(1 + (i % 3)), seq, tag, events], ts: 1000 + 400 * i });
    steps.push({ unordered: [key(1), 10_000 + seq, "net.fast", events], ts: 1000 + 400 * i });
    seq += events.length;
    if (i % 10 === 9) steps.push({ ageTrim: 1000 + 400 * i });
  }
  return steps;
}

function run(m: ChannelMachine, steps: readonly Step[], withUnordered = true): unknown[] {
  const results: unknown[] = [];
  for (const step of steps) {
    if ("admin" in step) results.push(m.applyAdmin(step.admin));
    else if ("ordered" in step) {
      const p = pub(...step.ordered);
      results.push(m.applyOrderedPublish(p.signed, p.request, step.ts));
    } else if ("unordered" in step) {
      if (!withUnordered) continue;
      const p = pub(...step.unordered);
      results.push(m.acceptUnorderedPublish(p.signed, p.request, step.ts).result);
    } else results.push(m.trimOrderedByAge(step.ageTrim));
  }
  return results;
}

function fresh(): ChannelMachine {
  return new ChannelMachine({ hash, config: CONFIG });
}

function scripted(): ChannelMachine {
  const m = fresh();
  run(m, script());
  return m;
}

function frame(value: Canonical): Uint8Array {
  const body = encodeCanonical(value);
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Splits a snapshot into its canonical records (for building altered snapshots). */
function records(bytes: Uint8Array): Array<{ [key: string]: Canonical }> {
  const out: Array<{ [key: string]: Canonical }> = [];
  let at = 0;
  while (at < bytes.length) {
    const length = new DataView(bytes.buffer, bytes.byteOffset + at).getUint32(0);
    out.push(decodeCanonical(bytes.subarray(at + 4, at + 4 + length)) as { [key: string]: Canonical });
    at += 4 + length;
  }
  return out;
}

describe("determinism", () => {
  test("two machines fed the same inputs give equal results, snapshots and digests", () => {
    const a = fresh();
    const b = fresh();
    const resultsA = run(a, script());
    const resultsB = run(b, script());
    expect(resultsB).toEqual(resultsA);
    expect(b.snapshot()).toEqual(a.snapshot());
    expect(b.digest()).toEqual(a.digest());
    // The script is meant to have exercised trimming on both total-order channels.
    for (const c of a.listChannels().filter((c) => c.order === "total")) expect(c.oldestSeq).toBeGreaterThan(1);
  });

  test("unordered stores differ between replicas without changing snapshot or digest", () => {
    const a = fresh();
    const b = fresh();
    run(a, script(), true);
    run(b, script(), false);
    expect(a.channelInfo("net.fast")?.retainedEvents).toBeGreaterThan(0);
    expect(b.channelInfo("net.fast")?.retainedEvents).toBe(0);
    expect(b.snapshot()).toEqual(a.snapshot());
    expect(b.digest()).toEqual(a.digest());
  });

  test("registration order does not matter, the registered set does", () => {
    const a = fresh();
    const b = fresh();
    for (const m of [a, b]) m.applyAdmin({ t: "create-channel", tag: "x", fault: "crash", order: "total", priority: "low", public: false });
    for (const n of [1, 2, 3]) a.applyAdmin({ t: "register", tag: "x", role: "publisher", key: key(n) });
    for (const n of [3, 2, 1]) b.applyAdmin({ t: "register", tag: "x", role: "publisher", key: key(n) });
    expect(b.snapshot()).toEqual(a.snapshot());
    expect(b.digest()).toEqual(a.digest());
  });

  test("every kind of replicated change changes the digest", () => {
    const m = fresh();
    const seen = new Set<string>();
    const note = (): void => {
      const hex = Buffer.from(m.digest()).toString("hex");
      expect(seen.has(hex)).toBe(false);
      seen.add(hex);
    };
    note();
    m.applyAdmin({ t: "create-channel", tag: "x", fault: "crash", order: "total", priority: "low", public: false });
    note();
    m.applyAdmin({ t: "register", tag: "x", role: "publisher", key: key(1) });
    note();
    m.applyAdmin({ t: "register", tag: "x", role: "subscriber", key: key(1) });
    note();
    const p = pub(key(1), 1, "x", ["a"]);
    m.applyOrderedPublish(p.signed, p.request, 100);
    note();
    m.trimOrderedByAge(100_000);
    note();
    m.applyAdmin({ t: "destroy-channel", tag: "x" });
    note();
  });
});

describe("restore", () => {
  test("a restored machine has the same bytes and digest and continues identically", () => {
    const original = scripted();
    const restored = fresh();
    expect(restored.restore(original.snapshot())).toEqual({ ok: true });
    expect(restored.snapshot()).toEqual(original.snapshot());
    expect(restored.digest()).toEqual(original.digest());
    expect(restored.readFrom("net.links", 1, 100)).toEqual(original.readFrom("net.links", 1, 100));
    expect(restored.listChannels().filter((c) => c.order === "total")).toEqual(original.listChannels().filter((c) => c.order === "total"));
    const next = pub(key(2), 500, "net.links", ["after restore"]);
    const a = original.applyOrderedPublish(next.signed, next.request, 99_000);
    const b = restored.applyOrderedPublish(next.signed, next.request, 99_000);
    expect(b).toEqual(a);
    expect(restored.digest()).toEqual(original.digest());
    // A new channel continues the generation counter.
    const create: AdminCmd = { t: "create-channel", tag: "new", fault: "crash", order: "none", priority: "low", public: false };
    expect(restored.applyAdmin(create)).toEqual(original.applyAdmin(create));
  });

  test("an import installs once", () => {
    const original = scripted();
    const target = fresh();
    const importer = target.beginRestore();
    importer.push(original.snapshot());
    expect(target.installSnapshot(importer)).toEqual({ ok: true });
    expect(() => target.installSnapshot(importer)).toThrow("already installed");
  });

  test("an empty state round-trips", () => {
    const restored = fresh();
    expect(restored.restore(fresh().snapshot())).toEqual({ ok: true });
    expect(restored.digest()).toEqual(fresh().digest());
  });

  test("a surviving unordered channel keeps this replica's local store", () => {
    const original = scripted();
    const local = original.channelInfo("net.fast")?.retainedEvents;
    expect(local).toBeGreaterThan(0);
    expect(original.restore(original.snapshot())).toEqual({ ok: true });
    expect(original.channelInfo("net.fast")?.retainedEvents).toBe(local);
    // A replica without it gets an empty local store for that channel.
    const other = fresh();
    other.restore(original.snapshot());
    expect(other.channelInfo("net.fast")?.retainedEvents).toBe(0);
  });

  test("chunks of any size, imported at any split, rebuild the same state", () => {
    const original = scripted();
    const whole = original.snapshot();
    for (const chunkBytes of [1, 100, 777, SNAPSHOT_CHUNK_BYTES_MAX]) {
      const exp = original.exportSnapshot();
      const chunks: Uint8Array[] = [];
      for (let c = exp.next(chunkBytes); c !== null; c = exp.next(chunkBytes)) {
        if (chunkBytes >= 100) expect(chunks.length === 0 || c.length <= chunkBytes || records(c).length === 1).toBe(true);
        chunks.push(c);
      }
      expect(exp.done).toBe(true);
      expect(exp.digest).toEqual(original.digest());
      expect(concat(chunks)).toEqual(whole);
    }
    for (const split of [1, 3, 4, 5, 64, 1000]) {
      const target = fresh();
      const importer = target.beginRestore();
      for (let at = 0; at < whole.length; at += split) expect(importer.push(whole.subarray(at, at + split))).toEqual({ ok: true });
      expect(importer.finish()).toEqual({ ok: true });
      expect(importer.digest()).toEqual(original.digest());
      expect(target.installSnapshot(importer)).toEqual({ ok: true });
      expect(target.snapshot()).toEqual(whole);
    }
  });

  test("an export is a capture: later changes do not leak into it", () => {
    const m = scripted();
    const before = m.snapshot();
    const exp = m.exportSnapshot();
    const p = pub(key(1), 900, "net.links", ["later"]);
    m.applyOrderedPublish(p.signed, p.request, 200_000);
    m.applyAdmin({ t: "register", tag: "net.links", role: "publisher", key: key(77) });
    expect(exp.all()).toEqual(before);
    expect(m.snapshot()).not.toEqual(before);
  });

  test("chunk sizes outside 1..SNAPSHOT_CHUNK_BYTES_MAX are refused", () => {
    const exp = scripted().exportSnapshot();
    expect(() => exp.next(0)).toThrow(RangeError);
    expect(() => exp.next(SNAPSHOT_CHUNK_BYTES_MAX + 1)).toThrow(RangeError);
  });

  test("altered content imports but cannot match the certified digest", () => {
    const original = scripted();
    const recs = records(original.snapshot());
    const batchIndex = recs.findIndex((r) => r["k"] === "batch");
    const batch = recs[batchIndex] as { [key: string]: Canonical };
    const tampered = [
      { ...batch, tsMs: (batch["tsMs"] as number) + 1 },
      { ...batch, sig: new Uint8Array(64).fill(9) },
      { ...batch, pubSeq: (batch["pubSeq"] as number) + 1 },
    ];
    for (const altered of tampered) {
      const copy = [...recs];
      copy[batchIndex] = altered;
      const target = fresh();
      const importer = target.beginRestore();
      importer.push(concat(copy.map(frame)));
      expect(importer.finish()).toEqual({ ok: true });
      expect(importer.digest()).not.toEqual(original.digest());
    }
    const channelIndex = recs.findIndex((r) => r["k"] === "channel" && r["log"] !== null);
    const channel = recs[channelIndex] as { [key: string]: Canonical };
    const copy = [...recs];
    copy[channelIndex] = {
      ...channel,
      log: { ...(channel["log"] as { [key: string]: Canonical }), baseChain: new Uint8Array(32).fill(1) },
    };
    const importer = fresh().beginRestore();
    importer.push(concat(copy.map(frame)));
    expect(importer.finish()).toEqual({ ok: true });
    expect(importer.digest()).not.toEqual(original.digest());
  });

  test("a failed restore leaves the state unchanged", () => {
    const m = scripted();
    const before = m.snapshot();
    const result = m.restore(before.subarray(0, before.length - 3));
    expect(result).toEqual({ ok: false, reason: "invalid snapshot: truncated" });
    expect(m.snapshot()).toEqual(before);
  });
});

describe("hostile snapshots are refused structurally", () => {
  const base = (): Array<{ [key: string]: Canonical }> => records(scripted().snapshot());
  const header = { k: "header", v: 1, generation: 1, channels: 1 };
  const channel = {
    k: "channel",
    tag: "a",
    generation: 1,
    fault: "crash",
    order: "total",
    priority: "low",
    public: false,
    publishers: [],
    subscribers: [],
    retention: { events: 20, bytes: 20_000, ageMs: 0 },
    log: { nextSeq: 3, baseChain: new Uint8Array(32), batches: 1 },
  };
  const batch = { k: "batch", firstSeq: 1, count: 2, tsMs: 5, publisher: key(1), pubSeq: 1, body: new Uint8Array(3), sig: SIG };

  const cases: Array<[string, () => Uint8Array, string]> = [
    ["a valid hand-built snapshot is accepted", () => concat([frame(header), frame(channel), frame(batch)]), "ok"],
    ["an unknown version", () => concat([frame({ ...header, v: 2 })]), "unsupported snapshot version 2"],
    ["a first record that is not the header", () => concat([frame(channel)]), "the first record is not the header"],
    ["more channels than configured", () => concat([frame({ ...header, channels: 9 })]), "more than 8 channels"],
    [
      "channels out of tag order",
      () => {
        const h = { ...header, generation: 2, channels: 2 };
        const c1 = { ...channel, tag: "b", log: null, order: "none" };
        const c2 = { ...channel, tag: "a", generation: 2, log: null, order: "none" };
        return concat([frame(h), frame(c1), frame(c2)]);
      },
      "channels out of tag order",
    ],
    ["a generation above the header's", () => concat([frame(header), frame({ ...channel, generation: 2 })]), "bad generation for a"],
    ["a bad tag", () => concat([frame(header), frame({ ...channel, tag: "A B" })]), "bad tag"],
    ["unsorted keys", () => concat([frame(header), frame({ ...channel, publishers: [key(2), key(1)] })]), "keys out of order"],
    ["a short key", () => concat([frame(header), frame({ ...channel, subscribers: [new Uint8Array(31)] })]), "bad key"],
    ["an unordered channel with a log", () => concat([frame(header), frame({ ...channel, order: "none" })]), "carries a log"],
    ["a total-order channel without a log", () => concat([frame(header), frame({ ...channel, log: null })]), "has no log"],
    ["a bad class", () => concat([frame(header), frame({ ...channel, fault: "omission" })]), "bad fault model"],
    [
      "a log that ends elsewhere than declared",
      () => concat([frame(header), frame({ ...channel, log: { ...channel.log, nextSeq: 4 } }), frame(batch)]),
      "log ends at 3, declared 4",
    ],
    [
      "a gap between batches",
      () => {
        const c = { ...channel, log: { ...channel.log, nextSeq: 6, batches: 2 } };
        return concat([frame(header), frame(c), frame(batch), frame({ ...batch, firstSeq: 4 })]);
      },
      "batch at 4, expected 3",
    ],
    ["a batch of zero events", () => concat([frame(header), frame(channel), frame({ ...batch, count: 0 })]), "bad batch range"],
    [
      "records after the last channel",
      () => concat([frame(header), frame(channel), frame(batch), frame(batch)]),
      "records after the last channel",
    ],
    [
      "a record above SNAPSHOT_RECORD_BYTES_MAX",
      () => {
        const f = new Uint8Array(8);
        new DataView(f.buffer).setUint32(0, SNAPSHOT_RECORD_BYTES_MAX + 1);
        return f;
      },
      `record of ${SNAPSHOT_RECORD_BYTES_MAX + 1} bytes exceeds`,
    ],
    [
      "a record that is not canonical CBOR",
      () => {
        const f = new Uint8Array([0, 0, 0, 2, 0x18, 0x01]);
        return f;
      },
      "invalid snapshot",
    ],
    [
      "more events than retention allows",
      () => {
        // One full request's worth of events more than retention, plus two.
        const c = {
          ...channel,
          retention: { events: 1, bytes: 20_000, ageMs: 0 },
          log: { nextSeq: REQUEST_EVENTS_MAX + 3, baseChain: new Uint8Array(32), batches: 2 },
        };
        return concat([
          frame(header),
          frame(c),
          frame({ ...batch, count: REQUEST_EVENTS_MAX }),
          frame({ ...batch, firstSeq: REQUEST_EVENTS_MAX + 1, count: 2 }),
        ]);
      },
      "more events than retention allows",
    ],
  ];

  test.each(cases)("%s", (_what, make, expected) => {
    const importer = new ChannelMachine({ hash, config: CONFIG }).beginRestore();
    const pushed = importer.push(make());
    const result = pushed.ok ? importer.finish() : pushed;
    if (expected === "ok") expect(result).toEqual({ ok: true });
    else {
      expect(result.ok).toBe(false);
      expect(result.ok ? "" : result.reason).toContain(expected);
      // A failed import keeps failing.
      expect(importer.push(new Uint8Array(0))).toEqual(result);
    }
  });

  test("a record holding more values than any valid record of its size is refused as it is decoded", () => {
    // One record of empty arrays, {k: [[], [], ...]}: a byte a value, where a valid record
    // takes at least SNAPSHOT_RECORD_BYTES_PER_ITEM_MIN.
    const inner = 100_000;
    const body = new Uint8Array(3 + 5 + inner);
    body.set([0xa1, 0x61, 0x6b, 0x9a]);
    new DataView(body.buffer).setUint32(4, inner);
    body.fill(0x80, 8);
    expect(inner).toBeGreaterThan(snapshotRecordItemsMax(body.length));
    const record = concat([new Uint8Array(4), body]);
    new DataView(record.buffer).setUint32(0, body.length);
    const result = fresh().beginRestore().push(record);
    expect(result.ok ? "" : result.reason).toBe("invalid snapshot: more items than the largest valid value holds");
  });

  test("the densest valid records decode within the bound on values", () => {
    // Keys ascending in byte order for any n below 65,536.
    const sortedKey = (n: number): Uint8Array => {
      const k = new Uint8Array(32);
      k[0] = n >>> 8;
      k[1] = n & 0xff;
      k[31] = 0x55;
      return k;
    };
    // The full group, current and pending, in the fewest bytes: one-character hosts, ports
    // below 24 (a one-byte integer), each host's ports distinct.
    const members = (epoch: number): Canonical =>
      Array.from({ length: REPLICAS_MAX }, (_, id) => ({
        id,
        host: String.fromCharCode(97 + Math.floor(id / 23)),
        port: 1 + (id % 23),
        peerPort: null,
        key: sortedKey(epoch * 100 + id),
      }));
    const group = (epoch: number): Canonical => ({ epoch, f: Math.floor((REPLICAS_MAX - 1) / 3), members: members(epoch) });
    const header = {
      k: "header",
      v: 1,
      generation: 0,
      channels: 0,
      quotas: Array.from({ length: QUOTAS_MAX }, (_, n) => ({ key: sortedKey(n), subscriptions: 1 })),
      membership: { current: group(0), pending: { from: 1, next: group(1) } },
    };
    const importer = fresh().beginRestore();
    expect(importer.push(frame(header))).toEqual({ ok: true });
    expect(importer.finish()).toEqual({ ok: true });
    // A channel record with full key lists.
    const m = new ChannelMachine({ hash, config: CONFIG });
    m.applyAdmin({ t: "create-channel", tag: "t", fault: "byzantine", order: "none", priority: "critical", public: true });
    for (let i = 0; i < KEYS_PER_CHANNEL_MAX; i++) {
      m.applyAdmin({ t: "register", tag: "t", role: "publisher", key: key(i) });
      m.applyAdmin({ t: "register", tag: "t", role: "subscriber", key: key(i) });
    }
    const restored = fresh().beginRestore();
    expect(restored.push(m.snapshot())).toEqual({ ok: true });
    expect(restored.finish()).toEqual({ ok: true });
  });

  test("a snapshot cut short is refused at finish", () => {
    const recs = base();
    const importer = fresh().beginRestore();
    importer.push(concat(recs.slice(0, -1).map(frame)));
    expect(importer.finish()).toEqual({ ok: false, reason: "invalid snapshot: truncated" });
    expect(() => importer.digest()).toThrow("not finished");
  });
});

describe("size bound", () => {
  test("a channel record with full key lists fits CHANNEL_RECORD_BYTES_MAX", () => {
    const m = new ChannelMachine({ hash, config: CONFIG });
    const tag = "t".repeat(128);
    m.applyAdmin({ t: "create-channel", tag, fault: "byzantine", order: "total", priority: "critical", public: true });
    for (let i = 0; i < KEYS_PER_CHANNEL_MAX; i++) {
      m.applyAdmin({ t: "register", tag, role: "publisher", key: key(i) });
      m.applyAdmin({ t: "register", tag, role: "subscriber", key: key(i) });
    }
    const channelRecord = records(m.snapshot())[1] as { [key: string]: Canonical };
    expect(frame(channelRecord).length).toBeLessThanOrEqual(CHANNEL_RECORD_BYTES_MAX);
  });

  test("a batch record's overhead beyond body and signature fits BATCH_RECORD_OVERHEAD_BYTES_MAX", () => {
    const big = Number.MAX_SAFE_INTEGER;
    const body = new Uint8Array(70_000);
    const record = { k: "batch", firstSeq: big, count: 65_536, tsMs: big, publisher: key(1), pubSeq: big, body, sig: SIG };
    expect(frame(record).length - body.length - SIG.length).toBeLessThanOrEqual(BATCH_RECORD_OVERHEAD_BYTES_MAX);
  });

  test("a state filled to every retention limit stays within snapshotBytesBound", () => {
    const config: ChannelsConfig = { ...CONFIG, channelsMax: 2, retention: { events: 30, bytes: 4000, ageMs: 0 } };
    const m = new ChannelMachine({ hash, config });
    for (const tag of ["a", "b"]) {
      m.applyAdmin({ t: "create-channel", tag, fault: "byzantine", order: "total", priority: "low", public: false });
      m.applyAdmin({ t: "register", tag, role: "publisher", key: key(1) });
      for (let seq = 1; seq <= 200; seq++) {
        const p = pub(key(1), seq, tag, [seq % 2 === 0 ? "x".repeat(150) : "y"]);
        m.applyOrderedPublish(p.signed, p.request, seq);
      }
    }
    expect(m.snapshot().length).toBeLessThanOrEqual(snapshotBytesBound(config));
  });
});
