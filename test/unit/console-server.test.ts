// The console's HTTP server in-process (src/cli/console/server.ts), with a fake client:
// nothing is served without the session the printed login URL sets; Host, Origin and
// Sec-Fetch-Site are checked; the tail limit holds under concurrent requests; a tail whose
// client reads nothing holds at most its byte budget, drops and counts the rest, and is
// ended when it stalls; a quiet tail writes heartbeats. The real cluster and a real browser:
// test/integration/console.test.ts.
import { afterEach, describe, expect, test } from "bun:test";
import { createConnection, type Socket } from "node:net";
import type { FitbClient } from "../../src/client/client.ts";
import type { BatchHandler, ReceivedBatch, Subscription } from "../../src/client/subscription.ts";
import { ConsoleServer, REQUEST_BODY_BYTES_MAX, TAIL_HELD_BYTES_MAX, TAILS_MAX } from "../../src/cli/console/server.ts";
import { TAIL_HEARTBEAT, TAIL_HEARTBEAT_MS } from "../../src/cli/console/tail.ts";
import { waitFor } from "../helpers/wait.ts";

/** Events pushed per batch into a tail, and bytes per event: enough to fill socket buffers quickly. */
const EVENTS_PER_BATCH = 64;
const PAYLOAD_BYTES = 1_000;
/** Bound on what the non-reading-client tests push before the budget must have been reached. */
const PUSHED_BYTES_MAX = 512 * 1_048_576;

/** A client whose channels never fail; `handlers` are the tails' subscriptions, in order. */
function fakeClient(options: { channelInfoHangs?: boolean } = {}) {
  const handlers: BatchHandler[] = [];
  const closed: string[] = [];
  const admin: unknown[] = [];
  const client = {
    config: { name: "test-cluster" },
    n: 4,
    f: 1,
    replicaStates: () => [],
    readyReplicas: () => [],
    channelInfo: (tag: string) =>
      options.channelInfoHangs === true ? new Promise(() => {}) : Promise.resolve({ tag, fault: "crash", order: "none" }),
    subscribe: async (tag: string, _options: unknown, onBatch: BatchHandler) => {
      handlers.push(onBatch);
      const done = Promise.withResolvers<void>();
      const subscription = {
        tag,
        done: done.promise,
        close: async () => {
          closed.push(tag);
          done.resolve();
        },
      };
      return subscription as unknown as Subscription;
    },
    admin: async (cmd: unknown) => {
      admin.push(cmd);
      return { at: 7 };
    },
  };
  return { client: client as unknown as FitbClient, handlers, closed, admin };
}

const servers: ConsoleServer[] = [];
const sockets: Socket[] = [];

afterEach(() => {
  for (const socket of sockets.splice(0)) socket.destroy();
  for (const server of servers.splice(0)) server.stop();
});

function startConsole(
  client: FitbClient,
  extra: { tailStallMs?: number; tailHeartbeatMs?: number; admin?: boolean; port?: number } = {},
): ConsoleServer {
  const server = ConsoleServer.start({
    client,
    admin: extra.admin ?? true,
    hostname: "127.0.0.1",
    port: extra.port ?? 0,
    version: "test",
    connectMs: 0,
    tailStallMs: extra.tailStallMs,
    tailHeartbeatMs: extra.tailHeartbeatMs,
  });
  servers.push(server);
  return server;
}

/** Logs in with the printed URL; the Cookie header of the session. */
async function logIn(server: ConsoleServer): Promise<string> {
  const answer = await fetch(server.loginUrl);
  expect(answer.status).toBe(200);
  return (answer.headers.get("set-cookie") as string).split(";")[0] as string;
}

function batchOf(count: number, seq: number): ReceivedBatch {
  const payload = new Uint8Array(PAYLOAD_BYTES).fill(0x61);
  return { tag: "net.links", seq, pubSeq: seq, publisher: new Uint8Array(32), ts: 0, events: Array.from({ length: count }, () => payload) };
}

/** A client that sends the request and then never reads: the kernel's buffers fill, then the server's. */
async function nonReadingTail(server: ConsoleServer, cookie: string): Promise<Socket> {
  const port = Number(new URL(server.url).port);
  const socket = createConnection({ host: "127.0.0.1", port });
  sockets.push(socket);
  socket.pause();
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  socket.write(`GET /api/tail?tag=net.links HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nCookie: ${cookie}\r\n\r\n`);
  return socket;
}

/** Lets the event loop run (the server writes to its sockets): a yield, not a wait for time. */
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe("console listener", () => {
  test("a second console on a port a console holds is refused, not started beside it to take some of its connections", () => {
    const first = startConsole(fakeClient().client);
    const port = Number(new URL(first.url).port);
    expect(() => startConsole(fakeClient().client, { port })).toThrow();
  });
});

describe("console login", () => {
  test("without the session every route answers 401, and only the login page says what to do", async () => {
    const server = startConsole(fakeClient().client);
    const page = await fetch(server.url);
    expect(page.status).toBe(401);
    const text = await page.text();
    expect(text).toContain("/?login=");
    expect(text).not.toContain("test-cluster");
    for (const path of ["api/status", "api/tail?tag=net.links", "assets/uPlot.iife.min.js", "favicon.ico"])
      expect((await fetch(`${server.url}${path}`)).status).toBe(401);
    expect((await fetch(`${server.url}api/admin`, { method: "POST", body: "{}" })).status).toBe(401);
  });

  test("the printed URL sets an HttpOnly, SameSite=Strict cookie and moves to / without the secret; it works once", async () => {
    const server = startConsole(fakeClient().client);
    expect(server.loginUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/\?login=[A-Za-z0-9_-]{43}$/);
    expect((await fetch(`${server.url}?login=wrong`)).status).toBe(403);
    const answer = await fetch(server.loginUrl);
    expect(answer.status).toBe(200);
    expect(answer.headers.get("set-cookie")).toMatch(
      /^fitb-console-\d+=[A-Za-z0-9_-]{43}; HttpOnly; SameSite=Strict; Path=\/; Max-Age=604800$/,
    );
    expect(answer.headers.get("cache-control")).toBe("no-store");
    expect(answer.headers.get("referrer-policy")).toBe("no-referrer");
    expect(await answer.text()).toContain('location.replace("/")');
    const cookie = (answer.headers.get("set-cookie") as string).split(";")[0] as string;
    const page = await fetch(server.url, { headers: { cookie } });
    expect(page.status).toBe(200);
    expect(await page.text()).toContain("test-cluster");
    // Used: another browser is refused; the logged-in one opening it again is let through.
    const again = await fetch(server.loginUrl);
    expect(again.status).toBe(403);
    expect(await again.text()).toContain("used already");
    expect((await fetch(server.loginUrl, { headers: { cookie } })).status).toBe(200);
    expect((await fetch(`${server.url}api/status`, { headers: { cookie: "fitb-console-1=forged" } })).status).toBe(401);
  });

  test("another Host is refused even with the session; another origin's page too", async () => {
    const server = startConsole(fakeClient().client);
    const cookie = await logIn(server);
    const port = new URL(server.url).port;
    const rebound = await fetch(`${server.url}api/status`, { headers: { cookie, host: `attacker.example:${port}` } });
    expect(rebound.status).toBe(403);
    const sameSite = await fetch(`${server.url}api/status`, { headers: { cookie, "sec-fetch-site": "same-site" } });
    expect(sameSite.status).toBe(403);
  });
});

describe("console admin POST", () => {
  test("needs the session, the page's token and the console's own Origin; a large body is refused unread", async () => {
    const fake = fakeClient();
    const server = startConsole(fake.client);
    const cookie = await logIn(server);
    const token = (
      /"token":"([0-9a-f]+)"/.exec(await (await fetch(server.url, { headers: { cookie } })).text()) as RegExpExecArray
    )[1] as string;
    const origin = server.url.slice(0, -1);
    const body = JSON.stringify({ t: "destroy-channel", tag: "sec.alerts" });
    const post = (headers: Record<string, string>, payload = body) =>
      fetch(`${server.url}api/admin`, {
        method: "POST",
        headers: { cookie, "content-type": "application/json", ...headers },
        body: payload,
      });
    expect((await post({ origin })).status).toBe(403);
    expect((await post({ "x-fitb-console-token": token })).status).toBe(403);
    const otherPort = `http://127.0.0.1:${Number(new URL(server.url).port) + 1}`;
    expect((await post({ "x-fitb-console-token": token, origin: otherPort })).status).toBe(403);
    expect((await post({ "x-fitb-console-token": token, origin }, "x".repeat(REQUEST_BODY_BYTES_MAX + 1))).status).toBe(413);
    expect(fake.admin).toEqual([]);
    const done = await post({ "x-fitb-console-token": token, origin });
    expect(done.status).toBe(200);
    expect(fake.admin).toEqual([{ t: "destroy-channel", tag: "sec.alerts" }]);
  });
});

describe("console tails", () => {
  test(`${TAILS_MAX} tails at most, under concurrent requests; a slot is free again when its page leaves`, async () => {
    const fake = fakeClient({ channelInfoHangs: true });
    const server = startConsole(fake.client);
    const cookie = await logIn(server);
    const aborts = Array.from({ length: 50 }, () => new AbortController());
    const answers = await Promise.all(
      aborts.map((abort) => fetch(`${server.url}api/tail?tag=net.links`, { headers: { cookie }, signal: abort.signal })),
    );
    const statuses = answers.map((answer) => answer.status);
    expect(statuses.filter((status) => status === 200)).toHaveLength(TAILS_MAX);
    expect(statuses.filter((status) => status === 429)).toHaveLength(50 - TAILS_MAX);
    expect(server.tailStats().open).toBe(TAILS_MAX);
    for (const abort of aborts) abort.abort();
    await waitFor(
      "every tail to end",
      () => server.tailStats().open === 0,
      undefined,
      () => JSON.stringify(server.tailStats()),
    );
    const next = new AbortController();
    const again = await fetch(`${server.url}api/tail?tag=net.links`, { headers: { cookie }, signal: next.signal });
    expect(again.status).toBe(200);
    next.abort();
  });

  test("a tag that is no channel's is refused before a slot is taken", async () => {
    const server = startConsole(fakeClient().client);
    const cookie = await logIn(server);
    expect((await fetch(`${server.url}api/tail?tag=Not%20A%20Tag`, { headers: { cookie } })).status).toBe(400);
    expect(server.tailStats().open).toBe(0);
  });

  test("a client that never reads: the tail holds at most its byte budget, drops and counts the rest", async () => {
    const fake = fakeClient();
    const server = startConsole(fake.client);
    const cookie = await logIn(server);
    const socket = await nonReadingTail(server, cookie);
    await waitFor("the tail's subscription", () => fake.handlers.length === 1);
    const onBatch = fake.handlers[0] as BatchHandler;
    let pushedBytes = 0;
    let seq = 1;
    // Past the kernel's socket buffers, the tail's budget fills and events are dropped.
    while (server.tailStats().eventsDropped === 0 && pushedBytes < PUSHED_BYTES_MAX) {
      await onBatch(batchOf(EVENTS_PER_BATCH, seq));
      seq += EVENTS_PER_BATCH;
      pushedBytes += EVENTS_PER_BATCH * PAYLOAD_BYTES;
      await turn();
    }
    expect(server.tailStats().eventsDropped).toBeGreaterThan(0);
    // As many again: all dropped, and what is held stays within the budget.
    const dropped = server.tailStats().eventsDropped;
    for (let i = 0; i < 100; i++) {
      await onBatch(batchOf(EVENTS_PER_BATCH, seq));
      seq += EVENTS_PER_BATCH;
      await turn();
    }
    const stats = server.tailStats();
    expect(stats.eventsDropped).toBe(dropped + 100 * EVENTS_PER_BATCH);
    expect(stats.heldBytesPeak).toBeLessThanOrEqual(TAIL_HELD_BYTES_MAX);
    expect(stats.heldBytes).toBeLessThanOrEqual(TAIL_HELD_BYTES_MAX);
    socket.destroy();
    await waitFor("the tail to end when its client is gone", () => server.tailStats().open === 0);
    expect(fake.closed).toEqual(["net.links"]);
  }, 60_000);

  test("a quiet tail writes an SSE comment heartbeat when it had nothing to write for a while; events still come after", async () => {
    expect(TAIL_HEARTBEAT_MS).toBe(15_000);
    expect(TAIL_HEARTBEAT).toMatch(/^: [^\n]*\n\n$/);
    const fake = fakeClient();
    // Short, so the test does not wait 15 s: it reads until it sees them, whenever they come.
    const server = startConsole(fake.client, { tailHeartbeatMs: 5 });
    const cookie = await logIn(server);
    const abort = new AbortController();
    const answer = await fetch(`${server.url}api/tail?tag=net.links`, { headers: { cookie }, signal: abort.signal });
    const reader = (answer.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let received = "";
    const readUntil = async (done: () => boolean): Promise<void> => {
      while (!done()) {
        const chunk = await reader.read();
        if (chunk.done) throw new Error(`the tail ended; received ${JSON.stringify(received)}`);
        received += decoder.decode(chunk.value, { stream: true });
      }
    };
    const heartbeats = () => received.split(TAIL_HEARTBEAT).length - 1;
    await readUntil(() => received.includes("event: ready") && heartbeats() >= 2);
    await (fake.handlers[0] as BatchHandler)(batchOf(1, 1));
    await readUntil(() => received.includes("event: event"));
    const seen = heartbeats();
    await readUntil(() => heartbeats() > seen);
    expect(server.tailStats().open).toBe(1);
    abort.abort();
    await waitFor("the tail to end when its page leaves", () => server.tailStats().open === 0);
  });

  test("a tail whose client reads nothing while bytes wait is ended, and its slot freed", async () => {
    const fake = fakeClient();
    const server = startConsole(fake.client, { tailStallMs: 100 });
    const cookie = await logIn(server);
    const socket = await nonReadingTail(server, cookie);
    const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    socket.on("error", () => {});
    await waitFor("the tail's subscription", () => fake.handlers.length === 1);
    const onBatch = fake.handlers[0] as BatchHandler;
    let pushedBytes = 0;
    for (let seq = 1; server.tailStats().open > 0 && pushedBytes < PUSHED_BYTES_MAX; seq += EVENTS_PER_BATCH) {
      await onBatch(batchOf(EVENTS_PER_BATCH, seq));
      pushedBytes += EVENTS_PER_BATCH * PAYLOAD_BYTES;
      await turn();
    }
    await waitFor("the stalled tail to end", () => server.tailStats().open === 0);
    await closed;
    expect(fake.closed).toEqual(["net.links"]);
  }, 60_000);
});
