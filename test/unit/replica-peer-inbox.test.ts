import { describe, expect, test } from "bun:test";
import { type MuteReason, PeerInbox, type PeerInboxLimits, TURN_MESSAGES_MAX } from "../../src/replica/peer-inbox.ts";
import { waitFor } from "../helpers/wait.ts";

/** The key of the session the test's messages came over. */
const KEY = new Uint8Array(32).fill(1);

const LIMITS: PeerInboxLimits = {
  bytesPerSecondMax: 1_000_000,
  messagesPerSecondMax: 100_000,
  muteMs: 50,
  muteMsMax: 400,
  floodMuteMs: 100,
  queueBytesMax: 1_000_000,
};

/** An inbox whose drain runs only when the test says, with a clock the test moves. */
function harness(
  limits: Partial<PeerInboxLimits> = {},
  precheck?: (from: number, msg: Uint8Array) => string | null,
  isLeader?: (peer: number) => boolean,
) {
  let t = 0;
  let pending: (() => void) | null = null;
  const processed: [number, number][] = [];
  /** The first byte of the session key each processed message came with. */
  const keys: number[] = [];
  const paused = new Set<number>();
  const events: string[] = [];
  const muted: [number, MuteReason, string][] = [];
  const muteMs: number[] = [];
  const unmuted: number[] = [];
  const dropped: [number, string][] = [];
  const inbox = new PeerInbox({
    limits: { ...LIMITS, ...limits },
    process: (from, msg, key) => {
      processed.push([from, msg[0] as number]);
      keys.push(key[0] as number);
    },
    ...(precheck === undefined ? {} : { precheck }),
    pause: (peer) => {
      paused.add(peer);
      events.push(`pause ${peer}`);
    },
    resume: (peer) => {
      paused.delete(peer);
      events.push(`resume ${peer}`);
    },
    onMuted: (peer, reason, detail, ms) => {
      muted.push([peer, reason, detail]);
      muteMs.push(ms);
    },
    onUnmuted: (peer) => unmuted.push(peer),
    onDropped: (peer, reason) => dropped.push([peer, reason]),
    ...(isLeader === undefined ? {} : { isLeader }),
    now: () => t,
    schedule: (run) => {
      pending = run;
    },
  });
  const turn = (): void => {
    const run = pending;
    pending = null;
    run?.();
  };
  return {
    inbox,
    processed,
    keys,
    paused,
    events,
    muted,
    muteMs,
    unmuted,
    dropped,
    turn,
    advance: (ms: number) => (t += ms),
    hasTurn: () => pending !== null,
  };
}

const msg = (tag: number, bytes = 10): Uint8Array => new Uint8Array(bytes).fill(tag);

describe("PeerInbox: round robin", () => {
  test("a peer with a long queue does not delay another peer's messages: one of each in turn", () => {
    const h = harness();
    for (let i = 0; i < 1_000; i++) h.inbox.push(3, msg(i % 256), KEY);
    h.inbox.push(1, msg(201), KEY);
    h.inbox.push(2, msg(202), KEY);
    h.turn();
    // The first turn takes one message of each peer in turn: 1, 2 and 3 all get one in the first three.
    expect(
      h.processed
        .slice(0, 3)
        .map(([from]) => from)
        .sort(),
    ).toEqual([1, 2, 3]);
    expect(h.processed.length).toBeLessThanOrEqual(TURN_MESSAGES_MAX);
    // The rest waits for later turns, each yielding to the event loop in between.
    expect(h.hasTurn()).toBe(true);
    while (h.hasTurn()) h.turn();
    expect(h.processed).toHaveLength(1_002);
  });

  test("the turn moves on after each message, also from the peer it started with: a long queue there does not hold the others back", () => {
    const h = harness();
    // Peer 1 comes first in the order and has the long queue.
    for (let i = 0; i < 1_000; i++) h.inbox.push(1, msg(i % 256), KEY);
    h.inbox.push(2, msg(202), KEY);
    h.inbox.push(3, msg(203), KEY);
    h.turn();
    expect(h.processed.slice(0, 3).map(([from]) => from)).toEqual([1, 2, 3]);
    // Once the others are empty, the long queue goes on alone.
    expect(h.processed.slice(3).every(([from]) => from === 1)).toBe(true);
  });

  test("each message is processed with the key of the session it came over, also once the peer reconnected with another", () => {
    const h = harness();
    const rotated = new Uint8Array(32).fill(2);
    h.inbox.push(2, msg(1), KEY);
    h.inbox.push(2, msg(2), rotated);
    h.inbox.push(2, msg(3), KEY);
    while (h.hasTurn()) h.turn();
    expect(h.processed).toEqual([
      [2, 1],
      [2, 2],
      [2, 3],
    ]);
    expect(h.keys).toEqual([1, 2, 1]);
  });

  test("a peer's queue over its bound pauses its reads until it is down to half", () => {
    const h = harness({ queueBytesMax: 100 });
    for (let i = 0; i < 11; i++) h.inbox.push(2, msg(i), KEY);
    expect(h.paused.has(2)).toBe(true);
    while (h.hasTurn() && h.paused.has(2)) h.turn();
    expect(h.paused.has(2)).toBe(false);
    expect(h.events).toEqual(["pause 2", "resume 2"]);
  });

  test("a peer that reconnects while its queue is over the bound stays paused: a new session lets nothing more in", () => {
    const h = harness({ queueBytesMax: 100 });
    // The mesh's connection: it reads until paused; a new session (after AUTH) reads again
    // until the inbox, told of it (connected), pauses it.
    let sessions = 0;
    for (let i = 0; i < 1_000; i++) {
      if (h.paused.has(2)) {
        h.paused.delete(2);
        sessions++;
        h.inbox.connected(2);
      }
      if (!h.paused.has(2)) h.inbox.push(2, msg(i % 256), KEY);
    }
    // Nothing was drained (the loop is held): the queue stays at the bound plus the one message that crossed it.
    expect(sessions).toBeGreaterThan(100);
    expect(h.inbox.queuedBytes(2)).toBeLessThanOrEqual(100 + 10);
    // Drained to half, the pause of the newest session is lifted as before.
    while (h.hasTurn() && h.paused.has(2)) h.turn();
    expect(h.paused.has(2)).toBe(false);
    expect(h.events.at(-1)).toBe("resume 2");
    // A session opened with the queue at or below half reads at once.
    h.inbox.connected(2);
    expect(h.paused.has(2)).toBe(false);
  });

  test("precheck drops a message before processing, counted with its reason", () => {
    const h = harness({}, (_from, m) => (m[0] === 7 ? "executed" : null));
    h.inbox.push(1, msg(7), KEY);
    h.inbox.push(1, msg(8), KEY);
    h.turn();
    expect(h.processed).toEqual([[1, 8]]);
    expect(h.dropped).toEqual([[1, "executed"]]);
  });
});

describe("PeerInbox: budgets and muting", () => {
  test("a peer over its message budget is muted: queue dropped, counted, and heard again when the mute ends", async () => {
    const h = harness({ messagesPerSecondMax: 5, muteMs: 30 });
    for (let i = 0; i < 5; i++) h.inbox.push(3, msg(i), KEY);
    h.inbox.push(1, msg(100), KEY);
    expect(h.muted).toEqual([]);
    h.inbox.push(3, msg(5), KEY);
    expect(h.muted).toEqual([[3, "budget", "more than 5 messages a second"]]);
    expect(h.muteMs).toEqual([30]);
    expect(h.inbox.isMuted(3)).toBe(true);
    expect(h.inbox.mutedForMs(3)).toBe(30);
    // What it had queued is dropped; the other peer's message is not.
    h.turn();
    expect(h.processed).toEqual([[1, 100]]);
    expect(h.dropped.filter(([peer]) => peer === 3)).toHaveLength(6);
    // What still arrives while muted is dropped before anything else.
    h.inbox.push(3, msg(9), KEY);
    expect(h.dropped.at(-1)).toEqual([3, "muted"]);
    // Time-bounded: the mute ends and its messages are taken again.
    h.advance(1_000);
    await waitFor("the mute to end", () => h.unmuted.includes(3), 10_000);
    expect(h.inbox.isMuted(3)).toBe(false);
    h.inbox.push(3, msg(42), KEY);
    h.turn();
    expect(h.processed.at(-1)).toEqual([3, 42]);
  });

  test("a peer muted again soon after is muted twice as long each time, up to the bound; after a quiet minute, from the start", () => {
    const h = harness({ messagesPerSecondMax: 1, muteMs: 50, muteMsMax: 400 });
    const overBudget = (): void => {
      h.advance(1_000);
      h.inbox.push(2, msg(1), KEY);
      h.inbox.push(2, msg(2), KEY);
    };
    for (let i = 0; i < 5; i++) overBudget();
    expect(h.muteMs).toEqual([50, 100, 200, 400, 400]);
    h.advance(61_000);
    overBudget();
    expect(h.muteMs.at(-1)).toBe(50);
    h.inbox.stop();
  });

  test("a peer whose message proves it faulty is muted as misbehaving; a drop that proves nothing is only counted", () => {
    const h = harness();
    const proving = new PeerInbox({
      limits: { ...LIMITS, muteMs: 50 },
      process: (from, m) => h.processed.push([from, m[0] as number]),
      precheck: (_from, m) => (m[0] === 1 ? "oversize" : m[0] === 2 ? "duplicate" : null),
      proves: (reason) => reason === "oversize",
      pause: () => {},
      resume: () => {},
      onMuted: (peer, reason, detail) => h.muted.push([peer, reason, detail]),
      onDropped: (peer, reason) => h.dropped.push([peer, reason]),
      schedule: (run) => run(),
    });
    proving.push(2, msg(2), KEY);
    expect(h.muted).toEqual([]);
    proving.push(3, msg(1), KEY);
    expect(h.muted).toEqual([[3, "misbehaving", "sent what no correct replica sends (oversize)"]]);
    expect(proving.isMuted(3)).toBe(true);
    expect(proving.isMuted(2)).toBe(false);
    expect(h.dropped).toEqual([
      [2, "duplicate"],
      [3, "oversize"],
    ]);
    proving.stop();
  });

  test("a peer over its byte budget is muted; another peer's budget is its own", () => {
    const h = harness({ bytesPerSecondMax: 1_000 });
    h.inbox.push(2, msg(1, 600), KEY);
    h.inbox.push(1, msg(2, 900), KEY);
    expect(h.muted).toEqual([]);
    h.inbox.push(2, msg(3, 600), KEY);
    expect(h.muted).toEqual([[2, "budget", "more than 1000 bytes a second"]]);
    expect(h.inbox.isMuted(1)).toBe(false);
  });

  test("a peer the core flags as flooding is muted for the flood period; a shorter mute does not cut it short", () => {
    const h = harness();
    h.inbox.mute(3, "flooding", "flagged", 100);
    h.inbox.mute(3, "budget", "over", 10);
    expect(h.muted).toEqual([[3, "flooding", "flagged"]]);
    h.advance(50);
    expect(h.inbox.isMuted(3)).toBe(true);
    h.advance(50);
    expect(h.inbox.isMuted(3)).toBe(false);
  });

  test("a PING answered at once (chargePing) costs one of the peer's PING budget: past it the answer is no, and the peer is not muted (a PING has no MAC)", () => {
    const h = harness({ messagesPerSecondMax: 5 });
    for (let i = 0; i < 5; i++) expect(h.inbox.chargePing(2)).toBe(true);
    expect(h.inbox.chargePing(2)).toBe(false);
    expect(h.muted).toEqual([]);
    expect(h.inbox.isMuted(2)).toBe(false);
    // The PING budget is apart from the messages': a flood of PINGs someone on the path
    // sends in a peer's name does not cost its messages.
    h.inbox.push(2, msg(1), KEY);
    expect(h.inbox.isMuted(2)).toBe(false);
    // A muted peer's PINGs are refused and counted.
    h.inbox.misbehaving(3, "a test");
    expect(h.inbox.chargePing(3)).toBe(false);
    expect(h.dropped).toEqual([[3, "muted"]]);
  });

  test("a peer the mesh or the ordering runtime catches sending what no correct replica sends is muted as misbehaving, longer each time", () => {
    const h = harness();
    h.inbox.misbehaving(4, "a frame of type 0x13: a peer link carries only PEER and PING");
    expect(h.muted).toEqual([
      [4, "misbehaving", "sent what no correct replica sends (a frame of type 0x13: a peer link carries only PEER and PING)"],
    ]);
    h.advance(LIMITS.muteMs);
    h.inbox.misbehaving(4, "again");
    expect(h.muteMs).toEqual([LIMITS.muteMs, 2 * LIMITS.muteMs]);
  });

  test("state transfer parts may be spared the byte budget", () => {
    const h = harness({ bytesPerSecondMax: 1_000 });
    const inbox = new PeerInbox({
      limits: { ...LIMITS, bytesPerSecondMax: 1_000 },
      process: () => {},
      chargesBytes: (_peer, m) => m[0] !== 0xee,
      pause: () => {},
      resume: () => {},
      onMuted: (peer, reason, detail) => h.muted.push([peer, reason, detail]),
      onDropped: () => {},
      schedule: () => {},
    });
    for (let i = 0; i < 10; i++) inbox.push(2, msg(0xee, 900), KEY);
    expect(h.muted).toEqual([]);
    inbox.push(2, msg(1, 900), KEY);
    inbox.push(2, msg(1, 900), KEY);
    expect(h.muted).toHaveLength(1);
    inbox.stop();
  });
});
