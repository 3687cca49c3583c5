// The channel state machine (src/README.md §1 replicated state, §3 per-CLASS paths, §5 retention):
// admin commands, ordered and unordered publishing, reads and resume, retention, and every
// refusal. Signatures are the caller's job (the machine's contract), so requests here carry
// a fixed signature; voting tests use real ones.
import { describe, expect, test } from "bun:test";
import { sha256 } from "@noble/hashes/sha2.js";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { encodeCanonical } from "../../wire/canonical.ts";
import {
  ChannelMachine,
  checkChannelsConfig,
  DEFAULT_CHANNELS_CONFIG,
  isValidTag,
  KEYS_PER_CHANNEL_MAX,
  READ_BATCHES_MAX,
  STORED_VIEW_MIN_BYTES,
  UNORDERED_DEDUPE_RANGES_MAX,
  type AdminCmd,
  type ChannelsConfig,
  type FaultModel,
  type OrderMode,
  type ReadResult,
  type Request,
  type SignedRequest,
} from "../../src/core/channels/index.ts";

const hash = (bytes: Uint8Array): Uint8Array => sha256(bytes);
const SIG = new Uint8Array(64).fill(7);
const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);

const CONFIG: ChannelsConfig = {
  channelsMax: 3,
  eventBytesMax: 100,
  requestBytesMax: 1000,
  requestEventsMax: 4,
  retention: { events: 10, bytes: 5000, ageMs: 1000 },
};

function key(n: number): Uint8Array {
  const k = new Uint8Array(32);
  k[0] = n & 0xff;
  k[1] = n >>> 8;
  k[31] = 0xaa;
  return k;
}

const P1 = key(1);
const P2 = key(2);
const S1 = key(101);

function pub(
  client: Uint8Array,
  seq: number,
  tag: string,
  events: Array<string | Uint8Array>,
  ts = 1,
): { signed: SignedRequest; request: Request } {
  const evs = events.map((e) => (typeof e === "string" ? utf8(e) : e));
  const request = { v: 1, client, seq, span: evs.length, ts, op: { t: "pub", tag, events: evs } } as const;
  const body = encodeCanonical({ v: 1, client, seq, span: evs.length, ts, op: { t: "pub", tag, events: evs } });
  return { signed: { body, sig: SIG }, request };
}

function create(tag: string, fault: FaultModel = "byzantine", order: OrderMode = "total", isPublic = false): AdminCmd {
  return { t: "create-channel", tag, fault, order, priority: "normal", public: isPublic };
}

function machine(config: ChannelsConfig = CONFIG): ChannelMachine {
  return new ChannelMachine({ hash, config });
}

/** A machine with one channel of the class and P1 registered as its publisher. */
function withChannel(tag: string, order: OrderMode = "total", config: ChannelsConfig = CONFIG): ChannelMachine {
  const m = machine(config);
  expect(m.applyAdmin(create(tag, "byzantine", order)).ok).toBe(true);
  expect(m.applyAdmin({ t: "register", tag, role: "publisher", key: P1 }).ok).toBe(true);
  return m;
}

function expectRead(result: ReadResult): Extract<ReadResult, { ok: true }> {
  if (!result.ok) throw new Error(`read refused: ${result.code} ${result.reason}`);
  return result;
}

describe("configuration", () => {
  test("the defaults are valid", () => {
    expect(checkChannelsConfig(DEFAULT_CHANNELS_CONFIG)).toBeNull();
    expect(checkChannelsConfig(CONFIG)).toBeNull();
  });

  test("retention that cannot hold one request is refused, so a stored batch is never trimmed at once", () => {
    expect(checkChannelsConfig({ ...CONFIG, retention: { ...CONFIG.retention, events: 3 } })).toContain("retention.events");
    expect(checkChannelsConfig({ ...CONFIG, retention: { ...CONFIG.retention, bytes: 999 } })).toContain("retention.bytes");
    expect(() => machine({ ...CONFIG, channelsMax: 0 })).toThrow(RangeError);
    expect(() => machine({ ...CONFIG, eventBytesMax: 1001 })).toThrow(RangeError);
  });

  test("the total retained bytes are bounded", () => {
    const huge = { ...DEFAULT_CHANNELS_CONFIG, channelsMax: 4096, retention: { ...DEFAULT_CHANNELS_CONFIG.retention, bytes: 1 << 30 } };
    expect(checkChannelsConfig(huge)).toContain("channelsMax × retention.bytes");
  });

  test("the hash must produce 32 bytes", () => {
    expect(() => new ChannelMachine({ hash: () => new Uint8Array(20), config: CONFIG })).toThrow("32 bytes");
  });
});

describe("tags", () => {
  test.each([["net.links"], ["storage.disks"], ["a"], ["a-b_c.0.z9"], ["x".repeat(128)]])("%s is valid", (tag) => {
    expect(isValidTag(tag)).toBe(true);
  });
  test.each([[""], ["Net.links"], ["net..links"], [".net"], ["net."], ["net links"], ["x".repeat(129)], ["ñ"]])("%p is invalid", (tag) => {
    expect(isValidTag(tag)).toBe(false);
  });
});

describe("admin commands", () => {
  test("create-channel assigns increasing generations and refuses an existing tag", () => {
    const m = machine();
    expect(m.applyAdmin(create("net.links"))).toEqual({ ok: true, cmd: "create-channel", tag: "net.links", generation: 1 });
    expect(m.applyAdmin(create("sec.ids"))).toEqual({ ok: true, cmd: "create-channel", tag: "sec.ids", generation: 2 });
    expect(m.applyAdmin(create("net.links", "crash", "none"))).toEqual({
      ok: false,
      code: "channel-exists",
      reason: "channel net.links already exists",
    });
  });

  test("create-channel refuses bad tags and bad class fields", () => {
    const m = machine();
    expect(m.applyAdmin(create("Bad Tag"))).toMatchObject({ ok: false, code: "bad-tag" });
    const cmd = create("ok") as Extract<AdminCmd, { t: "create-channel" }>;
    expect(m.applyAdmin({ ...cmd, fault: "weird" } as unknown as AdminCmd)).toMatchObject({ code: "bad-request" });
    expect(m.applyAdmin({ ...cmd, order: "fifo" } as unknown as AdminCmd)).toMatchObject({ code: "bad-request" });
    expect(m.applyAdmin({ ...cmd, priority: "urgent" } as unknown as AdminCmd)).toMatchObject({ code: "bad-request" });
    expect(m.applyAdmin({ ...cmd, public: 1 } as unknown as AdminCmd)).toMatchObject({ code: "bad-request" });
    expect(m.applyAdmin({ t: "rename", tag: "ok" } as unknown as AdminCmd)).toMatchObject({ code: "bad-request" });
    expect(m.channelCount).toBe(0);
  });

  test("create-channel stops at channelsMax", () => {
    const m = machine();
    for (const tag of ["a", "b", "c"]) expect(m.applyAdmin(create(tag)).ok).toBe(true);
    expect(m.applyAdmin(create("d"))).toEqual({ ok: false, code: "channels-full", reason: "at most 3 channels may exist" });
    expect(m.applyAdmin({ t: "destroy-channel", tag: "a" }).ok).toBe(true);
    expect(m.applyAdmin(create("d")).ok).toBe(true);
  });

  test("destroy-channel removes the channel and a re-created one starts afresh", () => {
    const m = withChannel("net.links");
    m.applyOrderedPublish(pub(P1, 1, "net.links", ["a"]).signed, pub(P1, 1, "net.links", ["a"]).request, 10);
    expect(m.applyAdmin({ t: "destroy-channel", tag: "net.links" })).toEqual({ ok: true, cmd: "destroy-channel", tag: "net.links" });
    expect(m.applyAdmin({ t: "destroy-channel", tag: "net.links" })).toEqual({
      ok: false,
      code: "unknown-channel",
      reason: "no channel net.links",
    });
    expect(m.applyAdmin(create("net.links"))).toMatchObject({ ok: true, generation: 2 });
    expect(m.channelInfo("net.links")).toMatchObject({ nextSeq: 1, publishers: 0, generation: 2 });
  });

  test("register is idempotent and checks role, key length and channel", () => {
    const m = machine();
    m.applyAdmin(create("net.links"));
    expect(m.applyAdmin({ t: "register", tag: "net.links", role: "publisher", key: P1 })).toEqual({
      ok: true,
      cmd: "register",
      tag: "net.links",
      role: "publisher",
      added: true,
    });
    expect(m.applyAdmin({ t: "register", tag: "net.links", role: "publisher", key: P1 })).toMatchObject({ ok: true, added: false });
    expect(m.applyAdmin({ t: "register", tag: "net.links", role: "publisher", key: new Uint8Array(31) })).toMatchObject({
      code: "bad-request",
    });
    expect(m.applyAdmin({ t: "register", tag: "net.links", role: "owner", key: P1 } as unknown as AdminCmd)).toMatchObject({
      code: "bad-request",
    });
    expect(m.applyAdmin({ t: "register", tag: "nope", role: "subscriber", key: S1 })).toMatchObject({ code: "unknown-channel" });
    expect(m.isPublisher("net.links", P1)).toBe(true);
    expect(m.isPublisher("net.links", P2)).toBe(false);
  });

  test("register stops at KEYS_PER_CHANNEL_MAX keys per role", () => {
    const m = machine();
    m.applyAdmin(create("net.links"));
    for (let i = 0; i < KEYS_PER_CHANNEL_MAX; i++) {
      expect(m.applyAdmin({ t: "register", tag: "net.links", role: "subscriber", key: key(i) }).ok).toBe(true);
    }
    expect(m.applyAdmin({ t: "register", tag: "net.links", role: "subscriber", key: key(KEYS_PER_CHANNEL_MAX) })).toMatchObject({
      code: "keys-full",
    });
    // Re-registering a present key is still fine, and the other role has its own budget.
    expect(m.applyAdmin({ t: "register", tag: "net.links", role: "subscriber", key: key(0) })).toMatchObject({ ok: true, added: false });
    expect(m.applyAdmin({ t: "register", tag: "net.links", role: "publisher", key: P1 }).ok).toBe(true);
  });
});

describe("subscribe permission", () => {
  test("registered subscribers may subscribe; public channels let anyone subscribe but not publish", () => {
    const m = machine();
    m.applyAdmin(create("private.ch"));
    m.applyAdmin(create("public.ch", "crash", "total", true));
    m.applyAdmin({ t: "register", tag: "private.ch", role: "subscriber", key: S1 });
    expect(m.canSubscribe("private.ch", S1)).toBe(true);
    expect(m.checkSubscribe("private.ch", P2)).toEqual({
      ok: false,
      code: "not-registered",
      reason: "subscriber is not registered on private.ch",
    });
    expect(m.canSubscribe("public.ch", P2)).toBe(true);
    expect(m.checkSubscribe("missing", S1)).toMatchObject({ code: "unknown-channel" });
    const { signed, request } = pub(P2, 1, "public.ch", ["x"]);
    expect(m.applyOrderedPublish(signed, request, 5).result).toMatchObject({ ok: false, code: "not-registered" });
  });
});

describe("unregister (revoking a key)", () => {
  test("a revoked publisher's later publishes are refused on both paths, and others' are not", () => {
    for (const order of ["total", "none"] as const) {
      const m = withChannel("net.links", order);
      m.applyAdmin({ t: "register", tag: "net.links", role: "publisher", key: P2 });
      const publish = (client: Uint8Array, seq: number) => {
        const { signed, request } = pub(client, seq, "net.links", ["x"]);
        return order === "total" ? m.applyOrderedPublish(signed, request, 5).result : m.acceptUnorderedPublish(signed, request, 5).result;
      };
      expect(publish(P1, 1).ok).toBe(true);
      expect(m.applyAdmin({ t: "unregister", tag: "net.links", role: "publisher", key: P1 })).toEqual({
        ok: true,
        cmd: "unregister",
        tag: "net.links",
        role: "publisher",
      });
      expect(m.isPublisher("net.links", P1)).toBe(false);
      expect(publish(P1, 2)).toMatchObject({ ok: false, code: "not-registered" });
      expect(publish(P2, 1).ok).toBe(true);
      // Registered again, the key publishes again.
      m.applyAdmin({ t: "register", tag: "net.links", role: "publisher", key: P1 });
      expect(publish(P1, 3).ok).toBe(true);
    }
  });

  test("a revoked subscriber may no longer subscribe to a private channel; a public one stays open to it", () => {
    const m = machine();
    m.applyAdmin(create("private.ch"));
    m.applyAdmin(create("public.ch", "crash", "total", true));
    for (const tag of ["private.ch", "public.ch"]) m.applyAdmin({ t: "register", tag, role: "subscriber", key: S1 });
    for (const tag of ["private.ch", "public.ch"])
      expect(m.applyAdmin({ t: "unregister", tag, role: "subscriber", key: S1 }).ok).toBe(true);
    expect(m.checkSubscribe("private.ch", S1)).toMatchObject({ ok: false, code: "not-registered" });
    expect(m.canSubscribe("public.ch", S1)).toBe(true);
  });

  test("a key not registered in that role, a bad key and an unknown channel are refused, and change nothing", () => {
    const m = withChannel("net.links");
    const before = m.digest();
    expect(m.applyAdmin({ t: "unregister", tag: "net.links", role: "subscriber", key: P1 })).toEqual({
      ok: false,
      code: "bad-request",
      reason: "the key is not a registered subscriber of net.links",
    });
    expect(m.applyAdmin({ t: "unregister", tag: "net.links", role: "publisher", key: P2 })).toMatchObject({ code: "bad-request" });
    expect(m.applyAdmin({ t: "unregister", tag: "net.links", role: "publisher", key: new Uint8Array(31) })).toMatchObject({
      code: "bad-request",
    });
    expect(m.applyAdmin({ t: "unregister", tag: "nope", role: "publisher", key: P1 })).toMatchObject({ code: "unknown-channel" });
    expect(m.digest()).toEqual(before);
  });

  test("the revocation is part of the replicated state: digest, snapshot and keys listing", () => {
    const m = withChannel("net.links");
    m.applyAdmin({ t: "register", tag: "net.links", role: "publisher", key: P2 });
    const registered = m.digest();
    m.applyAdmin({ t: "unregister", tag: "net.links", role: "publisher", key: P1 });
    expect(m.digest()).not.toEqual(registered);
    expect(m.channelKeys("net.links")).toEqual({ publishers: [P2], subscribers: [] });
    const copy = machine();
    expect(copy.restore(m.snapshot())).toEqual({ ok: true });
    expect(copy.digest()).toEqual(m.digest());
    expect(copy.isPublisher("net.links", P1)).toBe(false);
    expect(copy.isPublisher("net.links", P2)).toBe(true);
    expect(m.channelKeys("nope")).toBeNull();
  });
});

describe("set-quota", () => {
  test("sets, changes and clears a key's quota; refuses bad limits", () => {
    const m = machine();
    const hex = Buffer.from(P1).toString("hex");
    expect(m.quotaOf(hex)).toBeNull();
    expect(m.applyAdmin({ t: "set-quota", key: P1, eventsPerSecond: 5 })).toMatchObject({ ok: true, cmd: "set-quota", cleared: false });
    expect(m.quotaOf(hex)).toMatchObject({ eventsPerSecond: 5, bytesPerSecond: null, subscriptions: null });
    m.applyAdmin({ t: "set-quota", key: P1, bytesPerSecond: 100, subscriptions: 2 });
    expect(m.quotaOf(hex)).toMatchObject({ eventsPerSecond: null, bytesPerSecond: 100, subscriptions: 2 });
    expect(m.applyAdmin({ t: "set-quota", key: P1 })).toMatchObject({ ok: true, cleared: true });
    expect(m.quotaOf(hex)).toBeNull();
    expect(m.applyAdmin({ t: "set-quota", key: P1, eventsPerSecond: 0 })).toMatchObject({ ok: false, code: "bad-request" });
    expect(m.applyAdmin({ t: "set-quota", key: new Uint8Array(3), eventsPerSecond: 1 })).toMatchObject({ ok: false, code: "bad-request" });
  });

  test("quotas are replicated state: digest and snapshot; a state without any keeps its old digest", () => {
    const m = withChannel("net.links");
    const before = m.digest();
    m.applyAdmin({ t: "set-quota", key: P2, eventsPerSecond: 7, subscriptions: 1 });
    expect(m.digest()).not.toEqual(before);
    const copy = machine();
    expect(copy.restore(m.snapshot())).toEqual({ ok: true });
    expect(copy.digest()).toEqual(m.digest());
    expect(copy.quotaOf(Buffer.from(P2).toString("hex"))).toMatchObject({ eventsPerSecond: 7, bytesPerSecond: null, subscriptions: 1 });
    m.applyAdmin({ t: "set-quota", key: P2 });
    expect(m.digest()).toEqual(before);
  });
});

describe("ordered publish", () => {
  test("events receive consecutive channel seqs and each request is stored as one batch", () => {
    const m = withChannel("net.links");
    m.applyAdmin({ t: "register", tag: "net.links", role: "publisher", key: P2 });
    const a = pub(P1, 1, "net.links", ["eth0 down", "eth1 down", "eth2 down"]);
    const b = pub(P2, 7, "net.links", ["eth0 up"]);
    const first = m.applyOrderedPublish(a.signed, a.request, 1000);
    const second = m.applyOrderedPublish(b.signed, b.request, 1001);
    expect(first.result).toEqual({ ok: true, tag: "net.links", firstSeq: 1, count: 3 });
    expect(second.result).toEqual({ ok: true, tag: "net.links", firstSeq: 4, count: 1 });
    expect(first.stored).toMatchObject({ firstSeq: 1, count: 3, tsMs: 1000, pubSeq: 1, publisher: P1 });
    expect(first.stored?.body).toEqual(a.signed.body);
    expect(first.stored?.sig).toEqual(SIG);
    expect(first.trimmed).toBeNull();
    const read = expectRead(m.readFrom("net.links", 1, 10));
    expect(read.batches.map((b) => [b.firstSeq, b.count])).toEqual([
      [1, 3],
      [4, 1],
    ]);
    expect(read.nextSeq).toBe(5);
    expect(m.channelInfo("net.links")).toMatchObject({ retainedEvents: 4, nextSeq: 5, oldestSeq: 1 });
  });

  test("stored bytes are copied out of a larger buffer, kept where they are in a buffer of little else, and small ones always copied", () => {
    const roomyConfig = { ...CONFIG, eventBytesMax: 40_000, requestBytesMax: 50_000, retention: { ...CONFIG.retention, bytes: 1_000_000 } };
    const m = withChannel("net.links", "total", roomyConfig);
    const large = (seq: number) => pub(P1, seq, "net.links", [new Uint8Array(30_000).fill(seq)]);
    const placed = (body: Uint8Array, unused: number): { buffer: Uint8Array; view: Uint8Array } => {
      const buffer = new Uint8Array(body.length + unused);
      buffer.set(body, 5);
      return { buffer, view: buffer.subarray(5, 5 + body.length) };
    };
    // A body inside a proposal of many requests (more than a sixteenth unused): copied out.
    const a = large(1);
    const inProposal = placed(a.signed.body, (a.signed.body.length >>> 4) + 1);
    const copied = m.applyOrderedPublish({ body: inProposal.view, sig: SIG }, a.request, 1).stored;
    inProposal.buffer.fill(0);
    expect(copied?.body).toEqual(a.signed.body);
    expect(copied?.body.buffer.byteLength).toBe(a.signed.body.length);
    // A body in its own frame (a sixteenth or less unused): kept as it is; its signature,
    // read out of the same frame, is small and copied.
    const b = large(2);
    const inFrame = placed(b.signed.body, b.signed.body.length >>> 4);
    const kept = m.applyOrderedPublish({ body: inFrame.view, sig: inFrame.buffer.subarray(0, 64) }, b.request, 2).stored;
    expect(kept?.body.buffer).toBe(inFrame.buffer.buffer);
    expect(kept?.body).toEqual(b.signed.body);
    expect(kept?.sig.buffer).not.toBe(inFrame.buffer.buffer);
    // A body under STORED_VIEW_MIN_BYTES is copied even out of a frame of little else.
    const small = pub(P1, 3, "net.links", ["x"]);
    expect(small.signed.body.length).toBeLessThan(STORED_VIEW_MIN_BYTES);
    const smallFrame = placed(small.signed.body, 8);
    const smallStored = m.applyOrderedPublish({ body: smallFrame.view, sig: SIG }, small.request, 3).stored;
    expect(smallStored?.body.buffer).not.toBe(smallFrame.buffer.buffer);
    expect(smallStored?.body).toEqual(small.signed.body);
  });

  const refusals: Array<[string, (m: ChannelMachine) => { signed: SignedRequest; request: Request }, string]> = [
    [
      "an admin op on the publish path",
      () => {
        const request: Request = {
          v: 1,
          client: P1,
          seq: 1,
          span: 1,
          ts: 1,
          op: { t: "admin", cmd: { t: "destroy-channel", tag: "net.links" } },
        };
        return { signed: { body: new Uint8Array(10), sig: SIG }, request };
      },
      "bad-request",
    ],
    [
      "a span that differs from the event count",
      () => {
        const p = pub(P1, 1, "net.links", ["a", "b"]);
        return { signed: p.signed, request: { ...p.request, span: 3 } };
      },
      "bad-request",
    ],
    [
      "an empty event list",
      () => {
        const p = pub(P1, 1, "net.links", []);
        return p;
      },
      "bad-request",
    ],
    ["more events than requestEventsMax", () => pub(P1, 1, "net.links", ["1", "2", "3", "4", "5"]), "oversized"],
    ["an unknown channel", () => pub(P1, 1, "net.other", ["a"]), "unknown-channel"],
    ["an unordered channel on the ordered path", () => pub(P1, 1, "net.fast", ["a"]), "class-mismatch"],
    ["an unregistered publisher", () => pub(P2, 1, "net.links", ["a"]), "not-registered"],
    ["an event above eventBytesMax", () => pub(P1, 1, "net.links", [new Uint8Array(101)]), "oversized"],
    [
      "a request above requestBytesMax",
      () => {
        const p = pub(P1, 1, "net.links", [new Uint8Array(100)]);
        return { signed: { body: p.signed.body, sig: new Uint8Array(1000) }, request: p.request };
      },
      "oversized",
    ],
  ];

  test.each(refusals)("refuses %s, deterministically and without changing state", (_what, make, code) => {
    const m = withChannel("net.links");
    m.applyAdmin(create("net.fast", "crash", "none"));
    m.applyAdmin({ t: "register", tag: "net.fast", role: "publisher", key: P1 });
    const before = m.digest();
    const { signed, request } = make(m);
    const outcome = m.applyOrderedPublish(signed, request, 10);
    expect(outcome.result).toMatchObject({ ok: false, code });
    expect(outcome.stored).toBeNull();
    expect(m.digest()).toEqual(before);
    expect(m.channelInfo("net.links")?.nextSeq).toBe(1);
    // A second machine gives the identical refusal, reason text included.
    const twin = withChannel("net.links");
    twin.applyAdmin(create("net.fast", "crash", "none"));
    twin.applyAdmin({ t: "register", tag: "net.fast", role: "publisher", key: P1 });
    expect(twin.applyOrderedPublish(signed, request, 10).result).toEqual(outcome.result);
  });

  test("an event of exactly eventBytesMax and a full request are accepted", () => {
    const m = withChannel("net.links");
    const p = pub(P1, 1, "net.links", [new Uint8Array(100), new Uint8Array(100), "c", "d"]);
    expect(m.applyOrderedPublish(p.signed, p.request, 1).result).toMatchObject({ ok: true, count: 4 });
  });

  test("a timestamp that is not a non-negative integer is a caller bug", () => {
    const m = withChannel("net.links");
    const p = pub(P1, 1, "net.links", ["a"]);
    expect(() => m.applyOrderedPublish(p.signed, p.request, -1)).toThrow(RangeError);
    expect(() => m.applyOrderedPublish(p.signed, p.request, 1.5)).toThrow(RangeError);
  });
});

describe("unordered publish", () => {
  test("stores each batch once and acknowledges copies again with identical bytes", () => {
    const m = withChannel("net.fast", "none");
    const p = pub(P1, 5, "net.fast", ["a", "b"]);
    const first = m.acceptUnorderedPublish(p.signed, p.request, 100);
    const again = m.acceptUnorderedPublish(p.signed, p.request, 101);
    expect(first.result).toEqual({ ok: true, tag: "net.fast", pubSeq: 5, count: 2 });
    expect(first.stored).toMatchObject({ firstSeq: 1, count: 2, pubSeq: 5, tsMs: 100 });
    expect(again.result).toEqual(first.result);
    expect(again.stored).toBeNull();
    expect(m.channelInfo("net.fast")).toMatchObject({ retainedEvents: 2, nextSeq: 3 });
  });

  test("out-of-order arrival is accepted; a range that partly overlaps is refused as replayed", () => {
    const m = withChannel("net.fast", "none");
    const later = pub(P1, 10, "net.fast", ["x"]);
    const earlier = pub(P1, 3, "net.fast", ["a", "b"]);
    expect(m.acceptUnorderedPublish(later.signed, later.request, 1).stored).not.toBeNull();
    expect(m.acceptUnorderedPublish(earlier.signed, earlier.request, 2).stored).not.toBeNull();
    const overlapping = pub(P1, 4, "net.fast", ["b", "c"]);
    expect(m.acceptUnorderedPublish(overlapping.signed, overlapping.request, 3).result).toEqual({
      ok: false,
      code: "replayed",
      reason: "publisher seqs 4..5 were partly seen or are too old",
    });
    // Another publisher's seqs are independent.
    m.applyAdmin({ t: "register", tag: "net.fast", role: "publisher", key: P2 });
    const other = pub(P2, 4, "net.fast", ["b", "c"]);
    expect(m.acceptUnorderedPublish(other.signed, other.request, 4).result.ok).toBe(true);
  });

  test("a duplicate is acknowledged again only if it is the same request; other bytes under used seqs are refused", () => {
    // Two processes publishing with one key: the second's event under the first's numbers
    // must not be acknowledged, or it is lost (it is never stored).
    const m = withChannel("net.fast", "none");
    const first = pub(P1, 1, "net.fast", ["from the relay"]);
    expect(m.acceptUnorderedPublish(first.signed, first.request, 1).stored).not.toBeNull();
    expect(m.acceptUnorderedPublish(first.signed, first.request, 2)).toMatchObject({ result: { ok: true }, stored: null });
    const other = pub(P1, 1, "net.fast", ["from the cli"]);
    expect(m.acceptUnorderedPublish(other.signed, other.request, 3)).toMatchObject({
      result: { ok: false, code: "replayed", reason: "publisher seqs 1..1 were already used by another request" },
      stored: null,
    });
    const read = expectRead(m.readFrom("net.fast", 1, 10));
    expect(read.batches.map((b) => b.body)).toEqual([first.signed.body]);
  });

  test("past UNORDERED_DEDUPE_RANGES_MAX gapped ranges the oldest is forgotten, and the gap below it refused", () => {
    const config = { ...CONFIG, retention: { events: 10_000, bytes: 1_000_000, ageMs: 0 } };
    const m = withChannel("net.fast", "none", config);
    // Seqs 2, 4, 6, ...: the gaps are seqs this publisher used on other channels.
    for (let i = 1; i <= UNORDERED_DEDUPE_RANGES_MAX + 1; i++) {
      const p = pub(P1, 2 * i, "net.fast", ["e"]);
      expect(m.acceptUnorderedPublish(p.signed, p.request, i).stored).not.toBeNull();
    }
    // The forgotten range [2, 2] became the floor: seq 1, a gap below it, can no longer be
    // told apart from a replay and is refused; seq 2 itself is still a known duplicate.
    const gap = pub(P1, 1, "net.fast", ["e"]);
    expect(m.acceptUnorderedPublish(gap.signed, gap.request, 999).result).toMatchObject({ code: "replayed" });
    const oldest = pub(P1, 2, "net.fast", ["e"]);
    expect(m.acceptUnorderedPublish(oldest.signed, oldest.request, 999)).toMatchObject({ result: { ok: true }, stored: null });
    const recent = pub(P1, 2 * (UNORDERED_DEDUPE_RANGES_MAX + 1), "net.fast", ["e"]);
    expect(m.acceptUnorderedPublish(recent.signed, recent.request, 999)).toMatchObject({ result: { ok: true }, stored: null });
    // A gap above the floor is still tracked exactly: a late first copy there is accepted.
    const late = pub(P1, 3, "net.fast", ["e"]);
    expect(m.acceptUnorderedPublish(late.signed, late.request, 999).stored).not.toBeNull();
  });

  test("refuses a total-order channel, unknown channels, unregistered publishers and oversized requests", () => {
    const m = withChannel("net.links", "total");
    m.applyAdmin(create("net.fast", "crash", "none"));
    const onTotal = pub(P1, 1, "net.links", ["a"]);
    expect(m.acceptUnorderedPublish(onTotal.signed, onTotal.request, 1).result).toMatchObject({ code: "class-mismatch" });
    const unknown = pub(P1, 1, "net.none", ["a"]);
    expect(m.acceptUnorderedPublish(unknown.signed, unknown.request, 1).result).toMatchObject({ code: "unknown-channel" });
    const unregistered = pub(P1, 1, "net.fast", ["a"]);
    expect(m.acceptUnorderedPublish(unregistered.signed, unregistered.request, 1).result).toMatchObject({ code: "not-registered" });
    m.applyAdmin({ t: "register", tag: "net.fast", role: "publisher", key: P1 });
    const big = pub(P1, 1, "net.fast", [new Uint8Array(101)]);
    expect(m.acceptUnorderedPublish(big.signed, big.request, 1).result).toMatchObject({ code: "oversized" });
    // A refused copy leaves no dedupe trace: the same seqs are still accepted later.
    const fine = pub(P1, 1, "net.fast", ["a"]);
    expect(m.acceptUnorderedPublish(fine.signed, fine.request, 1).stored).not.toBeNull();
  });

  test("lastUnorderedSeq names the highest publisher seq stored here", () => {
    const m = withChannel("net.fast", "none");
    m.applyAdmin(create("net.links"));
    const hex = Buffer.from(P1).toString("hex");
    expect(m.lastUnorderedSeq("net.fast", hex)).toBe(0);
    const late = pub(P1, 10, "net.fast", ["x", "y"]);
    const early = pub(P1, 3, "net.fast", ["a"]);
    m.acceptUnorderedPublish(late.signed, late.request, 1);
    m.acceptUnorderedPublish(early.signed, early.request, 1);
    expect(m.lastUnorderedSeq("net.fast", hex)).toBe(11);
    expect(m.lastUnorderedSeq("net.links", hex)).toBe(0);
    expect(m.lastUnorderedSeq("missing", hex)).toBe(0);
  });

  test("a restore puts back a stored publish without the admission checks of publish time", () => {
    const m = withChannel("net.fast", "none");
    const at = { tag: "net.fast", generation: m.channelInfo("net.fast")?.generation ?? 0 };
    m.applyAdmin({ t: "unregister", tag: "net.fast", role: "publisher", key: P1 });
    // Stored while P1 was registered, and under a larger event limit than this one.
    const first = pub(P1, 1, "net.fast", ["a"]);
    const large = pub(P1, 2, "net.fast", [new Uint8Array(CONFIG.eventBytesMax + 1)]);
    expect(m.restoreUnorderedPublish(first.signed, first.request, at, 10).stored).toMatchObject({ firstSeq: 1, tsMs: 10 });
    expect(m.restoreUnorderedPublish(large.signed, large.request, at, 11).stored).toMatchObject({ firstSeq: 2, tsMs: 11 });
    // Deduplicated as on arrival: the same row twice is stored once.
    expect(m.restoreUnorderedPublish(first.signed, first.request, at, 12)).toMatchObject({ result: { ok: true }, stored: null });
    expect(expectRead(m.readFrom("net.fast", 1, 10)).batches.map((b) => b.body)).toEqual([first.signed.body, large.signed.body]);
    expect(m.lastUnorderedSeq("net.fast", Buffer.from(P1).toString("hex"))).toBe(2);
  });

  test("a restore refuses a row whose channel is gone, re-created, ordered, or not the one its request names", () => {
    const m = withChannel("net.fast", "none");
    m.applyAdmin(create("net.links"));
    const generation = m.channelInfo("net.fast")?.generation ?? 0;
    const p = pub(P1, 1, "net.fast", ["a"]);
    const restore = (tag: string, gen: number) => m.restoreUnorderedPublish(p.signed, p.request, { tag, generation: gen }, 1);
    expect(restore("net.fast", generation + 1).result).toMatchObject({ code: "unknown-channel" });
    expect(restore("net.links", generation).result).toMatchObject({ code: "bad-request" });
    const onTotal = pub(P1, 1, "net.links", ["a"]);
    const linksAt = { tag: "net.links", generation: m.channelInfo("net.links")?.generation ?? 0 };
    expect(m.restoreUnorderedPublish(onTotal.signed, onTotal.request, linksAt, 1).result).toMatchObject({ code: "class-mismatch" });
    const spanless = { ...p.request, span: 2 };
    const at = { tag: "net.fast", generation };
    expect(m.restoreUnorderedPublish(p.signed, spanless, at, 1).result).toMatchObject({ code: "bad-request" });
    m.applyAdmin({ t: "destroy-channel", tag: "net.fast" });
    expect(restore("net.fast", generation).result).toMatchObject({ code: "unknown-channel" });
    m.applyAdmin(create("net.fast", "crash", "none"));
    expect(restore("net.fast", generation).result).toMatchObject({ code: "unknown-channel" });
    expect(m.readFrom("net.fast", 1, 10)).toMatchObject({ ok: true, batches: [] });
  });

  test("unordered stores are outside the replicated digest", () => {
    const m = withChannel("net.fast", "none");
    const before = m.digest();
    const p = pub(P1, 1, "net.fast", ["a"]);
    m.acceptUnorderedPublish(p.signed, p.request, 1);
    expect(m.digest()).toEqual(before);
  });
});

describe("reads and resume", () => {
  function filled(): ChannelMachine {
    const m = withChannel("net.links");
    let seq = 1;
    for (let i = 0; i < 3; i++) {
      const p = pub(P1, seq, "net.links", ["a", "b", "c"]);
      m.applyOrderedPublish(p.signed, p.request, 10 + i);
      seq += 3;
    }
    return m; // batches at 1, 4, 7; nextSeq 10
  }

  test("reading from a seq inside a batch starts with that batch", () => {
    const read = expectRead(filled().readFrom("net.links", 5, 10));
    expect(read.batches.map((b) => b.firstSeq)).toEqual([4, 7]);
    expect(read).toMatchObject({ nextSeq: 10, oldestSeq: 1, generation: 1, tag: "net.links" });
  });

  test("maxBatches limits the answer and is clamped to READ_BATCHES_MAX", () => {
    const m = filled();
    expect(expectRead(m.readFrom("net.links", 1, 2)).batches.map((b) => b.firstSeq)).toEqual([1, 4]);
    expect(expectRead(m.readFrom("net.links", 1, READ_BATCHES_MAX * 10)).batches).toHaveLength(3);
  });

  test("reading at or past the end returns nothing yet", () => {
    const m = filled();
    expect(expectRead(m.readFrom("net.links", 10, 5)).batches).toEqual([]);
    expect(expectRead(m.readFrom("net.links", 500, 5)).batches).toEqual([]);
  });

  test("bad arguments and unknown channels are refused", () => {
    const m = filled();
    expect(m.readFrom("net.links", 0, 5)).toMatchObject({ code: "bad-request" });
    expect(m.readFrom("net.links", 1, 0)).toMatchObject({ code: "bad-request" });
    expect(m.readFrom("net.links", 1.5, 5)).toMatchObject({ code: "bad-request" });
    expect(m.readFrom("missing", 1, 5)).toMatchObject({ code: "unknown-channel" });
  });

  test("a trimmed --from gets an error naming the oldest available seq", () => {
    const config = { ...CONFIG, retention: { events: 4, bytes: 5000, ageMs: 0 } };
    const m = withChannel("net.links", "total", config);
    for (let i = 0; i < 3; i++) {
      const p = pub(P1, 1 + 2 * i, "net.links", ["a", "b"]);
      m.applyOrderedPublish(p.signed, p.request, 10);
    }
    // Six events in batches 1, 3, 5 with room for four: the batch at 1 is gone.
    expect(m.readFrom("net.links", 2, 5)).toEqual({
      ok: false,
      code: "trimmed",
      reason: "seq 2 of net.links is no longer retained; the oldest available is 3",
      oldestSeq: 3,
    });
    expect(expectRead(m.readFrom("net.links", 3, 5)).batches.map((b) => b.firstSeq)).toEqual([3, 5]);
  });
});

describe("retention", () => {
  test("the event limit trims whole batches, oldest first, and reports it", () => {
    const m = withChannel("net.links"); // events: 10
    const outcomes = [];
    for (let i = 0; i < 4; i++) {
      const p = pub(P1, 1 + 3 * i, "net.links", ["a", "b", "c"]);
      outcomes.push(m.applyOrderedPublish(p.signed, p.request, 10 + i));
    }
    expect(outcomes.slice(0, 3).map((o) => o.trimmed)).toEqual([null, null, null]);
    expect(outcomes[3]?.trimmed).toEqual({ tag: "net.links", oldestSeq: 4, batchesRemoved: 1, floors: [] });
    expect(m.channelInfo("net.links")).toMatchObject({ retainedEvents: 9, oldestSeq: 4, nextSeq: 13 });
  });

  test("the byte limit counts body plus signature", () => {
    const config = { ...CONFIG, retention: { events: 100, bytes: 1000, ageMs: 0 } };
    const m = withChannel("net.links", "total", config);
    const sizes: number[] = [];
    for (let i = 0; i < 5; i++) {
      const p = pub(P1, 1 + i, "net.links", [new Uint8Array(100)]);
      sizes.push(p.signed.body.length + SIG.length);
      m.applyOrderedPublish(p.signed, p.request, 10);
    }
    const info = m.channelInfo("net.links");
    const perBatch = sizes[0] as number;
    const kept = Math.floor(1000 / perBatch);
    expect(info).toMatchObject({ retainedEvents: kept, retainedBytes: kept * perBatch, oldestSeq: 6 - kept });
    expect(info?.retainedBytes).toBeLessThanOrEqual(1000);
  });

  test("age uses the decided timestamp of the triggering batch, not a clock", () => {
    const m = withChannel("net.links"); // ageMs: 1000
    const a = pub(P1, 1, "net.links", ["a"]);
    const b = pub(P1, 2, "net.links", ["b"]);
    const c = pub(P1, 3, "net.links", ["c"]);
    m.applyOrderedPublish(a.signed, a.request, 5000);
    m.applyOrderedPublish(b.signed, b.request, 5500);
    // 6000 - 1000 = 5000: the batch decided at 5000 is exactly ageMs old and goes.
    expect(m.applyOrderedPublish(c.signed, c.request, 6000).trimmed).toEqual({
      tag: "net.links",
      oldestSeq: 2,
      batchesRemoved: 1,
      floors: [],
    });
    expect(m.trimOrderedByAge(6499)).toEqual([]);
    expect(m.trimOrderedByAge(6500)).toEqual([{ tag: "net.links", oldestSeq: 3, batchesRemoved: 1, floors: [] }]);
    // Age may empty a channel; seqs continue where they were.
    expect(m.trimOrderedByAge(10_000)).toEqual([{ tag: "net.links", oldestSeq: 4, batchesRemoved: 1, floors: [] }]);
    expect(m.readFrom("net.links", 3, 1)).toMatchObject({ code: "trimmed", oldestSeq: 4 });
    expect(expectRead(m.readFrom("net.links", 4, 1))).toMatchObject({ batches: [], nextSeq: 4, oldestSeq: 4 });
  });

  test("ageMs 0 disables the age limit", () => {
    const config = { ...CONFIG, retention: { events: 100, bytes: 100_000, ageMs: 0 } };
    const m = withChannel("net.links", "total", config);
    const a = pub(P1, 1, "net.links", ["a"]);
    m.applyOrderedPublish(a.signed, a.request, 1);
    expect(m.trimOrderedByAge(Number.MAX_SAFE_INTEGER)).toEqual([]);
    expect(m.channelInfo("net.links")?.retainedEvents).toBe(1);
  });

  test("ordered and unordered age trims touch only their own channels", () => {
    const m = withChannel("net.links");
    m.applyAdmin(create("net.fast", "crash", "none"));
    m.applyAdmin({ t: "register", tag: "net.fast", role: "publisher", key: P1 });
    const a = pub(P1, 1, "net.links", ["a"]);
    const b = pub(P1, 2, "net.fast", ["b"]);
    m.applyOrderedPublish(a.signed, a.request, 100);
    m.acceptUnorderedPublish(b.signed, b.request, 100);
    expect(m.trimUnorderedByAge(5000)).toEqual([
      { tag: "net.fast", oldestSeq: 2, batchesRemoved: 1, floors: [{ publisher: P1, through: 2 }] },
    ]);
    expect(m.channelInfo("net.links")?.retainedEvents).toBe(1);
    expect(m.trimOrderedByAge(5000)).toEqual([{ tag: "net.links", oldestSeq: 2, batchesRemoved: 1, floors: [] }]);
  });

  test("a long stream stays within the limits at every step", () => {
    const m = withChannel("net.links");
    let seq = 1;
    for (let i = 0; i < 200; i++) {
      const events = Array.from({ length: 1 + (i % 4) }, (_, j) => `e${i}.${j}`);
      const p = pub(P1, seq, "net.links", events);
      seq += events.length;
      m.applyOrderedPublish(p.signed, p.request, 1000 + i);
      const info = m.channelInfo("net.links");
      expect(info?.retainedEvents).toBeLessThanOrEqual(10);
      expect(info?.retainedBytes).toBeLessThanOrEqual(5000);
      expect(info?.nextSeq).toBe(seq);
    }
  });
});

describe("listing", () => {
  test("listChannels is in tag order with class and counts", () => {
    const m = machine();
    m.applyAdmin(create("zeta", "crash", "none"));
    m.applyAdmin(create("alpha", "byzantine", "total", true));
    m.applyAdmin({ t: "register", tag: "alpha", role: "subscriber", key: S1 });
    const list = m.listChannels();
    expect(list.map((c) => c.tag)).toEqual(["alpha", "zeta"]);
    expect(list[0]).toEqual({
      tag: "alpha",
      generation: 2,
      fault: "byzantine",
      order: "total",
      priority: "normal",
      public: true,
      publishers: 0,
      subscribers: 1,
      retention: CONFIG.retention,
      nextSeq: 1,
      oldestSeq: 1,
      retainedEvents: 0,
      retainedBytes: 0,
    });
    expect(m.channelInfo("missing")).toBeNull();
  });
});

describe("sans-IO", () => {
  test("core channel and voting code uses no clock, timer, randomness, runtime or I/O", () => {
    const root = join(import.meta.dir, "../../src/core");
    const forbidden = [
      /Date\.now/,
      /new Date\(/,
      /setTimeout/,
      /setInterval/,
      /Math\.random/,
      /performance\.now/,
      /from "node:/,
      /\bBun\./,
      /from "bun/,
    ];
    for (const dir of ["channels", "voting"]) {
      for (const file of readdirSync(join(root, dir))) {
        const text = readFileSync(join(root, dir, file), "utf8");
        for (const pattern of forbidden) expect({ file, hit: pattern.test(text) }).toEqual({ file, hit: false });
      }
    }
  });
});
