// One relay connection (src/relay/connection.ts) against test doubles: a socket whose
// kernel buffer the test fills and empties by hand, a clock the test advances, and a
// backend whose subscriptions and publishes the test starts, feeds and answers. Covers the
// bounds of wire/PROTOCOL.md 11.2: held events before a SUB's +OK, the slow-reader bound
// per connection and across the relay, the stall timeout, answers nobody reads (bounded per
// connection before every command and across the relay, and kept out of the slow-reader
// bound), a command the input ends inside (11.1), a connection's own publish bytes, a PUB
// woken with others at a full queue, and a pattern's channels that end.
import { describe, expect, test } from "bun:test";
import type { PublishAck } from "../../src/client/client.ts";
import { ClientError, SubscriptionEndedError } from "../../src/client/errors.ts";
import { Publisher } from "../../src/client/publisher.ts";
import type { BatchHandler, ReceivedBatch, SubscribeOptions, SubscriptionHandle } from "../../src/client/subscription.ts";
import { type LineSocket, type RelayBackend, RelayConnection, type RelayTimers } from "../../src/relay/connection.ts";
import { type RelayLimits, resolveRelayLimits } from "../../src/relay/limits.ts";
import { RelayMetrics } from "../../src/relay/metrics.ts";
import { RelayOutputBytes } from "../../src/relay/output-bytes.ts";
import { PublishBytesBudget } from "../../src/relay/publish-bytes.ts";
import { SLOW_LOG_INTERVAL_MS, throttledLog } from "../../src/relay/server.ts";
import { completeLines } from "../helpers/line-client.ts";
import { waitFor } from "../helpers/wait.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const PUBLISHER_KEY = new Uint8Array(32).fill(7);
/** Bytes of payload per event in these tests; an EVENT line adds its header (about 90 bytes). */
const PAYLOAD_BYTES = 200;

/** A socket whose kernel takes `room` bytes, then pushes back until the test reads some. */
class FakeSocket implements LineSocket {
  room: number;
  private taken: Uint8Array[] = [];
  paused = false;
  ended = false;
  terminated = false;
  connection: RelayConnection | null = null;

  constructor(room = Number.POSITIVE_INFINITY) {
    this.room = room;
  }

  write(data: Uint8Array): number {
    if (this.terminated) return -1;
    const count = Math.min(data.byteLength, this.room);
    this.room -= count;
    if (count > 0) this.taken.push(data.slice(0, count));
    return count;
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
  }

  end(): void {
    this.ended = true;
  }

  /** Closes at once; Bun then calls the close handler, as this does. */
  terminate(): void {
    this.terminated = true;
    this.connection?.onClose();
  }

  /** The client reads `bytes` more: room in the kernel, and the socket drains. */
  read(bytes: number): void {
    this.room += bytes;
    this.connection?.onDrain();
  }

  get text(): string {
    return dec.decode(concat(this.taken));
  }

  /** Complete lines received so far. */
  get lines(): string[] {
    return completeLines(this.text);
  }
}

/** A clock that moves only when the test says. */
class ManualTimers implements RelayTimers {
  private nowMs = 0;
  private readonly due = new Map<number, { atMs: number; callback: () => void }>();
  private nextId = 1;

  now(): number {
    return this.nowMs;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.due.set(id, { atMs: this.nowMs + ms, callback });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.due.delete(handle as number);
  }

  /** Moves the clock on by `ms`, running each timer that falls due, in time order. */
  advance(ms: number): void {
    const until = this.nowMs + ms;
    for (;;) {
      const next = [...this.due.entries()].filter(([, timer]) => timer.atMs <= until).sort((a, b) => a[1].atMs - b[1].atMs)[0];
      if (next === undefined) break;
      this.due.delete(next[0]);
      this.nowMs = next[1].atMs;
      next[1].callback();
    }
    this.nowMs = until;
  }
}

/** A subscription the test starts (or refuses), feeds with batches and signals, and ends. */
interface FakeSubscription {
  readonly tag: string;
  readonly options: SubscribeOptions;
  readonly onBatch: BatchHandler;
  start(): void;
  refuse(error: Error): void;
  end(error: Error): void;
  closed: boolean;
}

/** The publish target of the backend's publishers: the test acknowledges by hand. */
class HandAnsweredTarget {
  readonly calls: { tag: string; events: readonly Uint8Array[]; resolve: (ack: PublishAck) => void; reject: (error: Error) => void }[] = [];
  private nextSeq = 1;

  publishLimits() {
    return { batchEventsMax: 1, eventBytesMax: 64 * 1024, frameBytesMax: 4 * 1024 * 1024, inflightRequestsMax: 64 };
  }

  publish(tag: string, events: readonly Uint8Array[]): Promise<PublishAck> {
    return new Promise((resolve, reject) => this.calls.push({ tag, events, resolve, reject }));
  }

  /** Acknowledges the oldest request not yet acknowledged. */
  ackOne(): void {
    const call = this.calls.shift();
    if (call === undefined) throw new Error("no publish to acknowledge");
    const first = this.nextSeq;
    this.nextSeq += call.events.length;
    call.resolve({ tag: call.tag, span: call.events.length, pubSeq: first, channelSeq: first, firstSeq: first, replicas: [0, 1] });
  }

  get published(): string[] {
    return this.calls.flatMap((call) => call.events.map((event) => dec.decode(event)));
  }
}

/** A backend shared by the connections of one test, as RelayServer's is. */
function fakeBackend(
  limits: Partial<RelayLimits> = {},
  publisherQueueEventsMax = 1_000,
  more: Pick<RelayBackend, "metrics" | "keyNote"> = { metrics: null },
) {
  const timers = new ManualTimers();
  const resolved = resolveRelayLimits(limits);
  const subscriptions: FakeSubscription[] = [];
  const logs: string[] = [];
  const target = new HandAnsweredTarget();
  const publishers = new Map<string, Publisher>();
  const backend: RelayBackend = {
    ...more,
    limits: resolved,
    publishBytes: new PublishBytesBudget(resolved.publishBytesMax),
    outputBytes: new RelayOutputBytes(resolved.relayOutboundBytesMax, resolved.relayAnswerOutboundBytesMax),
    timers,
    publisherFor: (tag) => {
      let publisher = publishers.get(tag);
      if (publisher === undefined) {
        // One request in flight at a time: what is published meanwhile waits in the queue.
        publisher = new Publisher(target, tag, { inflightBatchesMax: 1, queueEventsMax: publisherQueueEventsMax });
        publishers.set(tag, publisher);
      }
      return publisher;
    },
    subscribe: (tag, options, onBatch) =>
      new Promise<SubscriptionHandle>((resolve, reject) => {
        let endDone: (error: Error) => void = () => undefined;
        const done = new Promise<void>((_resolve, rejectDone) => {
          endDone = rejectDone;
        });
        done.catch(() => undefined);
        const sub: FakeSubscription = {
          tag,
          options,
          onBatch,
          closed: false,
          start: () =>
            resolve({
              tag,
              done,
              close: async () => {
                sub.closed = true;
              },
            }),
          refuse: (error) => reject(error),
          end: (error) => endDone(error),
        };
        subscriptions.push(sub);
      }),
    log: (message) => logs.push(message),
    logSlow: (message) => logs.push(message),
  };
  return { backend, timers, subscriptions, logs, target, resolved };
}

type Backend = ReturnType<typeof fakeBackend>;

function connect(backend: Backend, socket = new FakeSocket()): { connection: RelayConnection; socket: FakeSocket } {
  const connection = new RelayConnection(socket, backend.backend, () => undefined);
  socket.connection = connection;
  return { connection, socket };
}

function send(connection: RelayConnection, text: string): void {
  connection.onData(enc.encode(text));
}

/** Waits until `socket` has received at least `count` lines (`what` names them in a failure). */
async function linesArrive(socket: FakeSocket, count: number, what: string): Promise<void> {
  await waitFor(
    what,
    () => socket.lines.length >= count,
    undefined,
    () => socket.text,
  );
}

/** A delivered batch of `count` events of PAYLOAD_BYTES each; `seq` null: an unordered channel. */
function batch(tag: string, seq: number | null, count = 1, pubSeq = 1): ReceivedBatch {
  const events = Array.from({ length: count }, (_, i) => enc.encode(`${"x".repeat(PAYLOAD_BYTES - 8)}e${String(i).padStart(7, "0")}`));
  return { tag, seq, pubSeq, publisher: PUBLISHER_KEY, ts: 1_767_225_600_000, events };
}

/** The size of one batch's event lines as the relay writes them. */
function lineBytes(b: ReceivedBatch): number {
  const seq = b.seq ?? b.pubSeq;
  let total = 0;
  b.events.forEach((payload, index) => {
    total += enc.encode(`EVENT ${b.tag} ${seq + index} ed25519:${"A".repeat(43)} ${b.ts} `).byteLength + payload.byteLength + 1;
  });
  return total;
}

async function subscriptionNamed(backend: Backend, tag: string): Promise<FakeSubscription> {
  await waitFor(`the SUB ${tag} to reach the backend`, () => backend.subscriptions.some((sub) => sub.tag === tag));
  return backend.subscriptions.find((sub) => sub.tag === tag) as FakeSubscription;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

describe("events held for a SUB's +OK", () => {
  test("a SLOW end before the +OK names the first held seq, not the current batch's", async () => {
    const one = lineBytes(batch("t.tot", 5));
    const backend = fakeBackend({ eventOutboundBytesMax: 3 * one });
    const { connection, socket } = connect(backend);
    send(connection, "SUB t.tot\n");
    const sub = await subscriptionNamed(backend, "t.tot");
    sub.onBatch(batch("t.tot", 5));
    sub.onBatch(batch("t.tot", 6));
    sub.onBatch(batch("t.tot", 7));
    // The fourth would pass the bound: the subscription ends, and 5, 6 and 7 are never written.
    sub.onBatch(batch("t.tot", 8));
    sub.start();
    await linesArrive(socket, 2, "the +OK and the END");
    expect(socket.lines).toEqual(["+OK", `END t.tot SLOW the client fell behind (${3 * one} bytes not yet read); resume with SUB t.tot 5`]);
    expect(sub.closed).toBe(true);
    // The relay says so in its own log too.
    expect(backend.logs).toEqual([
      `subscription to t.tot ended SLOW: the client fell behind (${3 * one} bytes not yet read); resume with SUB t.tot 5`,
    ]);
  });

  test("on an unordered channel the END says events were dropped", async () => {
    const one = lineBytes(batch("t.none", null, 1, 40));
    const backend = fakeBackend({ eventOutboundBytesMax: one });
    const { connection, socket } = connect(backend);
    send(connection, "SUB t.none\n");
    const sub = await subscriptionNamed(backend, "t.none");
    sub.onBatch(batch("t.none", null, 1, 40));
    sub.onBatch(batch("t.none", null, 1, 41));
    sub.start();
    await linesArrive(socket, 2, "the END");
    expect(socket.lines[1]).toBe(`END t.none SLOW the client fell behind (${one} bytes not yet read); events were dropped`);
  });

  test("the slow-reader bound counts what every SUB of the connection holds, not one SUB's", async () => {
    const one = lineBytes(batch("t.a", 1));
    const bound = 4 * one;
    const backend = fakeBackend({ eventOutboundBytesMax: bound });
    const { connection, socket } = connect(backend);
    send(connection, "SUB t.a\nSUB t.b\n");
    const a = await subscriptionNamed(backend, "t.a");
    const b = await subscriptionNamed(backend, "t.b");
    for (let seq = 1; seq <= 3; seq++) a.onBatch(batch("t.a", seq));
    // t.b alone holds nothing, but the connection holds 3 lines: a fourth fits, a fifth not.
    b.onBatch(batch("t.b", 1));
    b.onBatch(batch("t.b", 2));
    a.start();
    b.start();
    await linesArrive(socket, 6, "both answers and the END");
    // t.b's held event went with it: the connection wrote t.a's three, never more than the bound.
    expect(socket.lines.filter((line) => line.startsWith("EVENT "))).toHaveLength(3);
    expect(socket.lines.at(-1)).toBe(`END t.b SLOW the client fell behind (${bound} bytes not yet read); resume with SUB t.b 1`);
    expect(connection.subscriptionCount).toBe(1);
  });
});

describe("output nobody reads", () => {
  test("a connection whose output makes no progress for outputStallTimeoutMs is closed; progress restarts the clock", async () => {
    const timeoutMs = 60_000;
    const backend = fakeBackend({ outputStallTimeoutMs: timeoutMs });
    const { connection, socket } = connect(backend, new FakeSocket(0));
    send(connection, "PING\nPING\n");
    await waitFor("the answers to wait in the queue", () => backend.backend.outputBytes.usedBytes === 10);
    backend.timers.advance(timeoutMs - 1);
    expect(socket.terminated).toBe(false);
    // The client reads a little: the clock starts again from here.
    socket.read(3);
    backend.timers.advance(timeoutMs - 1);
    expect(socket.terminated).toBe(false);
    backend.timers.advance(1);
    expect(socket.terminated).toBe(true);
    expect(connection.isClosed).toBe(true);
    expect(backend.logs).toContain(`relay connection dropped: the client read none of its 7 bytes of output for ${timeoutMs} ms`);
    // Its bytes leave the relay-wide total with it.
    expect(backend.backend.outputBytes.usedBytes).toBe(0);
  });

  test("output that all went out stops the clock", async () => {
    const backend = fakeBackend({ outputStallTimeoutMs: 1_000 });
    const { connection, socket } = connect(backend, new FakeSocket(0));
    send(connection, "PING\n");
    await waitFor("the answer to wait", () => backend.backend.outputBytes.usedBytes === 5);
    socket.read(5);
    backend.timers.advance(10_000);
    expect(socket.terminated).toBe(false);
    expect(socket.lines).toEqual(["PONG"]);
  });

  test("past the relay-wide output bound a SUB whose connection has output waiting ends SLOW; an idle one still gets its batch", async () => {
    const one = lineBytes(batch("t.tot", 1));
    // Room for one waiting batch across the relay (the +OK lines are answers, counted apart).
    const backend = fakeBackend({ relayOutboundBytesMax: one + 100, eventOutboundBytesMax: 100 * one });
    const first = connect(backend, new FakeSocket(0));
    const second = connect(backend, new FakeSocket(0));
    const idle = connect(backend);
    send(first.connection, "SUB t.tot\n");
    send(second.connection, "SUB t.tot\n");
    send(idle.connection, "SUB t.tot\n");
    await waitFor("three SUBs", () => backend.subscriptions.length === 3);
    for (const sub of backend.subscriptions) sub.start();
    await waitFor("the +OKs: two waiting, one read", () => backend.backend.outputBytes.usedBytes === 8 && idle.socket.lines.length === 1);
    const [a, b, c] = backend.subscriptions as [FakeSubscription, FakeSubscription, FakeSubscription];
    a.onBatch(batch("t.tot", 1));
    await waitFor("the first batch to wait", () => backend.backend.outputBytes.usedBytes === 8 + one);
    b.onBatch(batch("t.tot", 1));
    c.onBatch(batch("t.tot", 1));
    expect(a.closed).toBe(false);
    expect(b.closed).toBe(true);
    expect(c.closed).toBe(false);
    second.socket.read(Number.POSITIVE_INFINITY);
    await linesArrive(second.socket, 2, "the END");
    expect(second.socket.lines[1]).toBe(
      `END t.tot SLOW the client fell behind (4 bytes not yet read) while the relay holds ${one} bytes of subscription output not yet read across its connections; at most ${one + 100}; resume with SUB t.tot 1`,
    );
    await waitFor("the idle reader's event", () => idle.socket.lines.length === 2);
  });
});

/**
 * Records the most output the relay-wide count held at any time: every change goes through
 * its `update`, so the peak is exact, whatever the order the connections ran in.
 */
function trackPeak(backend: Backend): { readonly bytes: number } {
  const peak = { bytes: 0 };
  const counted = backend.backend.outputBytes;
  const update = counted.update.bind(counted) as (...args: number[]) => void;
  (counted as { update: (...args: number[]) => void }).update = (...args: number[]) => {
    update(...args);
    peak.bytes = Math.max(peak.bytes, counted.usedBytes);
  };
  return peak;
}

/** The answer to `SUB A`, an invalid tag: 11 times the bytes of the command. */
const BAD_TAG_ANSWER = '-ERR BAD_REQUEST tag "A" is not dot-separated segments of [a-z0-9_-]+';

describe("answers nobody reads", () => {
  test("commands wait once the connection's output passes the read-pause bound, checked before every command", async () => {
    const readPause = 4 * 1024;
    const backend = fakeBackend({ readPauseOutboundBytes: readPause });
    const peak = trackPeak(backend);
    const { connection, socket } = connect(backend, new FakeSocket(0));
    // 12 KB of commands in one read (one parse slice), 140 KB of answers.
    const count = 2_000;
    send(connection, "SUB A\n".repeat(count));
    await waitFor("the answers to reach the read-pause bound", () => backend.backend.outputBytes.usedBytes > readPause);
    expect(socket.paused).toBe(true);
    // The client reads: the commands go on, and every answer comes, in order.
    socket.read(Number.POSITIVE_INFINITY);
    await linesArrive(socket, count, "every answer");
    expect(new Set(socket.lines)).toEqual(new Set([BAD_TAG_ANSWER]));
    // At most one command's answer past the bound was ever queued, not the whole read's.
    expect(peak.bytes).toBeLessThanOrEqual(readPause + 2 * (BAD_TAG_ANSWER.length + 1));
  });

  test("answers other connections never read are bounded across the relay, and end no reader's subscription", async () => {
    const one = lineBytes(batch("t.tot", 1));
    const readPause = 2 * 1024;
    const answersMax = 8 * 1024;
    // Room for four waiting batches of subscription output across the relay.
    const backend = fakeBackend({
      readPauseOutboundBytes: readPause,
      relayAnswerOutboundBytesMax: answersMax,
      relayOutboundBytesMax: 4 * one,
    });
    const peak = trackPeak(backend);
    // A reader that lags: it has not read its +OK yet.
    const reader = connect(backend, new FakeSocket(0));
    send(reader.connection, "SUB t.tot\n");
    const sub = await subscriptionNamed(backend, "t.tot");
    sub.start();
    await waitFor("the +OK to wait", () => backend.backend.outputBytes.usedBytes === 4);
    // Clients that send commands and never read: each could queue 14 KB of answers.
    const idlers = Array.from({ length: 12 }, () => connect(backend, new FakeSocket(0)));
    for (const idler of idlers) send(idler.connection, "SUB A\n".repeat(200));
    await waitFor("their answers to pass the relay's answer bound", () => backend.backend.outputBytes.usedBytes > answersMax);
    // Far more answers wait than the subscription output bound allows; the reader's events still go.
    sub.onBatch(batch("t.tot", 1));
    sub.onBatch(batch("t.tot", 2));
    expect(sub.closed).toBe(false);
    expect(backend.backend.outputBytes.subscriptionBytes).toBe(2 * one);
    // Once a connection with output waiting sees the answers past their bound, it runs no
    // more commands: past the bound, at most one read-pause's worth and an answer each.
    const answerLine = BAD_TAG_ANSWER.length + 1;
    expect(peak.bytes).toBeLessThanOrEqual(answersMax + readPause + 2 * (idlers.length + 1) * answerLine + 4);
    reader.socket.read(Number.POSITIVE_INFINITY);
    await linesArrive(reader.socket, 3, "the +OK and both events");
    expect(reader.socket.lines[0]).toBe("+OK");
    // The idlers read at last: every answer comes.
    for (const idler of idlers) idler.socket.read(Number.POSITIVE_INFINITY);
    for (const idler of idlers) await linesArrive(idler.socket, 200, "an idler's answers");
    expect(peak.bytes).toBeLessThanOrEqual(answersMax + readPause + 2 * (idlers.length + 1) * answerLine + 2 * one + 4);
  });
});

describe("the end of the input", () => {
  test("FIN inside a command: not run, refused after every earlier answer, then the relay closes", async () => {
    const backend = fakeBackend();
    const { connection, socket } = connect(backend);
    send(connection, "PUB t.a first\nPING\nPUBB t.a 10\nhalf");
    connection.onEnd();
    await waitFor("the publish to be sent", () => backend.target.calls.length === 1);
    expect(backend.target.published).toEqual(["first"]);
    // The PUB's +OK is not yet known: nothing may overtake it.
    expect(socket.lines).toEqual([]);
    backend.target.ackOne();
    await linesArrive(socket, 3, "the answers");
    expect(socket.lines).toEqual(["+OK t.a 1", "PONG", "-ERR BAD_REQUEST input ended inside a command; not run"]);
    await waitFor("the relay to close", () => socket.ended);
    expect(backend.target.calls).toEqual([]);
  });

  test("after QUIT an unfinished line gets no answer; a FIN between commands gets none either", async () => {
    const backend = fakeBackend();
    const quit = connect(backend);
    send(quit.connection, "QUIT\nPUB t.a cut");
    quit.connection.onEnd();
    await waitFor("the relay to close", () => quit.socket.ended);
    expect(quit.socket.lines).toEqual(["+OK"]);
    const clean = connect(backend);
    send(clean.connection, "PING\n");
    clean.connection.onEnd();
    await waitFor("the relay to close", () => clean.socket.ended);
    expect(clean.socket.lines).toEqual(["PONG"]);
  });
});

describe("publishes", () => {
  test("one connection past its own share of the publish bytes waits for its acks; another is not refused", async () => {
    const event = "p".repeat(100);
    // Room for two of busy's events (each is the 100 bytes and a digit).
    const backend = fakeBackend({ connectionPublishBytesMax: 2 * (event.length + 1) });
    const busy = connect(backend);
    const other = connect(backend);
    send(busy.connection, `PUB t.a ${event}1\nPUB t.a ${event}2\nPUB t.a ${event}3\nPING\n`);
    // Two are taken (one sent, one queued behind it); the third waits, and the PING behind it.
    await waitFor("two publishes taken", () => backend.backend.publishBytes.usedBytes === 2 * event.length + 2);
    send(other.connection, `PUB t.b ${event}4\n`);
    await waitFor("the other connection's publish taken", () => backend.backend.publishBytes.usedBytes === 3 * event.length + 3);
    expect(busy.socket.paused).toBe(true);
    await waitFor("every publish answered", () => {
      if (backend.target.calls.length > 0) backend.target.ackOne();
      return busy.socket.lines.length === 4 && other.socket.lines.length === 1;
    });
    expect(busy.socket.lines.map((line) => line.replace(/\d+$/, "N"))).toEqual(["+OK t.a N", "+OK t.a N", "+OK t.a N", "PONG"]);
    expect(other.socket.lines[0]).toMatch(/^\+OK t\.b \d+$/);
    expect(backend.target.published).toEqual([]);
  });

  test("PUBs of several connections woken at once by room for one: each waits again, none is refused", async () => {
    const backend = fakeBackend({}, 1);
    const first = connect(backend);
    const second = connect(backend);
    const third = connect(backend);
    // One request in flight and one event queued: the publisher is full.
    send(first.connection, "PUB t.q a\nPUB t.q b\n");
    await waitFor("a sent and b queued", () => backend.target.calls.length === 1 && backend.backend.publishBytes.usedBytes === 2);
    send(second.connection, "PUB t.q c\n");
    send(third.connection, "PUB t.q d\n");
    // Each answer frees room for one event; both waiters wake, and one must wait again.
    await waitFor("every publish answered", () => {
      if (backend.target.calls.length > 0) backend.target.ackOne();
      return first.socket.lines.length === 2 && second.socket.lines.length === 1 && third.socket.lines.length === 1;
    });
    const lines = [...first.socket.lines, ...second.socket.lines, ...third.socket.lines];
    expect(lines.filter((line) => line.startsWith("-ERR"))).toEqual([]);
    expect(lines.filter((line) => /^\+OK t\.q \d+$/.test(line))).toHaveLength(4);
  });
});

describe("refusals", () => {
  test("a publish refused for the relay's key names the key and counts under its channel; one for a missing channel under _other", async () => {
    const metrics = new RelayMetrics(() => ({ connections: 0, subscriptions: 0, publishers: 0, publishBytesHeld: 0, replicas: [] }));
    const backend = fakeBackend({}, 1_000, { metrics, keyNote: " (key ed25519:RELAY of this relay)" });
    const { connection, socket } = connect(backend);
    send(connection, "PUB sec.ids x\nPUB no.such y\n");
    await waitFor("both publishes sent", () => backend.target.calls.length === 2);
    const byTag = (tag: string) => backend.target.calls.find((call) => call.tag === tag);
    byTag("sec.ids")?.reject(new ClientError("UNAUTHORIZED", "publisher is not registered on sec.ids"));
    byTag("no.such")?.reject(new ClientError("UNKNOWN_CHANNEL", "no channel no.such"));
    await waitFor("both answered", () => socket.lines.length === 2);
    expect(socket.lines).toEqual([
      "-ERR UNAUTHORIZED publisher is not registered on sec.ids (key ed25519:RELAY of this relay)",
      "-ERR UNKNOWN_CHANNEL no channel no.such",
    ]);
    const series = (await metrics.registry.text()).split("\n").filter((line) => line.startsWith("fitb_relay_events_published_total{"));
    expect(series.sort()).toEqual([
      'fitb_relay_events_published_total{tag="_other"} 1',
      'fitb_relay_events_published_total{tag="sec.ids"} 1',
    ]);
  });
});

describe("pattern SUBs", () => {
  test("a channel the pattern stops following gets END <channel> <code>; the pattern goes on", async () => {
    const backend = fakeBackend();
    const { connection, socket } = connect(backend);
    send(connection, "SUB net.*\n");
    const sub = await subscriptionNamed(backend, "net.*");
    // Before the +OK: held, and written after it.
    sub.options.onSignal?.({ t: "channel", tag: "net.z", event: "skipped", reason: "the pattern follows at most 64 channels" });
    sub.start();
    await linesArrive(socket, 2, "the +OK and the END");
    const refusal = new ClientError("UNAUTHORIZED", "the key may not subscribe to net.c");
    sub.options.onSignal?.({ t: "channel", tag: "net.c", event: "refused", reason: refusal.message, cause: refusal });
    const destroyed = new SubscriptionEndedError("UNKNOWN_CHANNEL", "DESTROYED", "channel net.d was destroyed");
    sub.options.onSignal?.({ t: "channel", tag: "net.d", event: "ended", reason: destroyed.message, cause: destroyed });
    sub.options.onSignal?.({ t: "channel", tag: "net.a", event: "added", reason: "matches" });
    sub.onBatch(batch("net.a", 3));
    await linesArrive(socket, 5, "the ENDs and the event");
    expect(socket.lines.slice(0, 4)).toEqual([
      "+OK",
      "END net.z LIMIT the pattern follows at most 64 channels; net.* goes on without it",
      "END net.c UNAUTHORIZED the key may not subscribe to net.c; net.* goes on without it",
      "END net.d DESTROYED channel net.d was destroyed; net.* goes on without it",
    ]);
    expect(socket.lines[4]).toStartWith("EVENT net.a 3 ");
    expect(connection.subscriptionCount).toBe(1);
    expect(sub.closed).toBe(false);
  });

  test("a SLOW end of a pattern says to SUB the pattern again, and where its channel stopped", async () => {
    const one = lineBytes(batch("net.a", 9));
    const backend = fakeBackend({ eventOutboundBytesMax: one });
    const { connection, socket } = connect(backend);
    send(connection, "SUB net.*\n");
    const sub = await subscriptionNamed(backend, "net.*");
    sub.onBatch(batch("net.a", 9));
    sub.onBatch(batch("net.b", 4));
    sub.start();
    await linesArrive(socket, 2, "the END");
    expect(socket.lines[1]).toBe(
      `END net.* SLOW the client fell behind (${one} bytes not yet read); net.a stopped at seq 9 (SUB net.a 9 fetches it); SUB net.* again to go on (a pattern takes no from-seq)`,
    );
  });
});

describe("relay SLOW log lines", () => {
  test("at most one line per interval, the next one counting those left out", () => {
    const lines: string[] = [];
    let now = 0;
    const log = throttledLog(
      (line) => lines.push(line),
      SLOW_LOG_INTERVAL_MS,
      () => now,
    );
    log("a ended SLOW");
    log("b ended SLOW");
    log("c ended SLOW");
    now += SLOW_LOG_INTERVAL_MS - 1;
    log("d ended SLOW");
    expect(lines).toEqual(["a ended SLOW"]);
    now += 1;
    log("e ended SLOW");
    expect(lines).toEqual(["a ended SLOW", "e ended SLOW (and 3 more like it since the last such line)"]);
    now += SLOW_LOG_INTERVAL_MS;
    log("f ended SLOW");
    expect(lines.at(-1)).toBe("f ended SLOW");
    // A clock stepped back: the next line is due, not held until the clock catches up.
    now -= 60_000;
    log("g ended SLOW");
    expect(lines.at(-1)).toBe("g ended SLOW");
  });
});
