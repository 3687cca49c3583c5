// The reconnect backoff of a client connection (connection.ts) against a replica that
// completes the handshake and drops the session at once: such a session is a failed
// attempt, so the replica is dialled ever later, not every 50-100 ms for ever (each time
// sent every unanswered request and every subscription again). A session that stayed up
// SESSION_STABLE_MS starts the backoff again from its first delay.
import { afterEach, expect, test } from "bun:test";
import type { Socket } from "bun";
import { DEFAULT_BACKOFF } from "../../src/client/backoff.ts";
import { type ConnectionOptions, ReplicaConnection, SESSION_STABLE_MS } from "../../src/client/connection.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { FrameDecoder } from "../../wire/frame.ts";
import { decodeFrameBody } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { encodeSessionFrame, replicaSessionKeys, testConnectionOptions } from "../helpers/client-session.ts";
import { waitFor } from "../helpers/wait.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

type State = { decoder: FrameDecoder; helloDone: boolean; kept: boolean };

/**
 * A fake replica 0 on loopback: it answers every HELLO; once the client's AUTH is in (the
 * session is up at the client) it drops the session at once while `dropping`, else keeps it.
 */
function fakeReplica(key: SigningKey) {
  const control = { dropping: true, sessions: [] as Socket<State>[] };
  const listener = Bun.listen<State>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        socket.data = { decoder: new FrameDecoder({ copyPayloads: true }), helloDone: false, kept: false };
      },
      data(socket, chunk) {
        // A session kept up: what the client sends on it (PINGs) is not looked at.
        if (socket.data.kept) return;
        for (const item of socket.data.decoder.push(new Uint8Array(chunk))) {
          if (!item.ok) return void socket.end();
          if (socket.data.helloDone) {
            // The AUTH: the client's session is up.
            if (control.dropping) return void socket.end();
            socket.data.kept = true;
            control.sessions.push(socket);
            return;
          }
          const decoded = decodeFrameBody(item.type, item.payload);
          if (!decoded.ok || decoded.frame.type !== FrameType.HELLO) return void socket.end();
          const { ack } = replicaSessionKeys(key, 0, decoded.frame.body);
          socket.write(encodeSessionFrame({ type: FrameType.HELLO_ACK, body: ack }, null));
          socket.data.helloDone = true;
        }
      },
    },
  });
  cleanups.push(() => listener.stop(true));
  return { port: listener.port, control };
}

/** A connection to the fake replica, with the counts of its sessions up and down; `options` override the test defaults. */
function connect(key: SigningKey, port: number, options: Partial<ConnectionOptions> = {}) {
  const counts = { ready: 0, down: 0 };
  const connection = new ReplicaConnection(
    { id: 0, host: "127.0.0.1", port, publicKey: key.publicKey },
    SigningKey.generate(),
    { onReady: () => void counts.ready++, onFrame: () => {}, onDown: () => void counts.down++ },
    // No jitter: each delay is the base one (100, 200, 400, 800 ms, ...).
    { ...testConnectionOptions(1 << 20), backoff: DEFAULT_BACKOFF, random: () => 0, ...options },
  );
  cleanups.push(() => connection.close());
  connection.start();
  return { connection, counts };
}

test("a replica that drops every session as it opens is dialled ever later, not every 100 ms", async () => {
  const key = SigningKey.generate();
  const { port } = fakeReplica(key);
  const { connection, counts } = connect(key, port);
  await Bun.sleep(1_200);
  // Dialled at 0, then after 100, 200, 400 ms (and 800 ms after that, past the window);
  // a backoff reset by every handshake would have been ~12 sessions.
  expect(counts.ready).toBeGreaterThanOrEqual(3);
  expect(counts.ready).toBeLessThanOrEqual(5);
  expect(connection.consecutiveFailures).toBe(counts.down);
});

test("a session that stayed up SESSION_STABLE_MS starts the backoff again; one that ends sooner does not", async () => {
  const key = SigningKey.generate();
  const { port, control } = fakeReplica(key);
  let nowMs = 1_000_000;
  // A keepalive check every 10 ms; nothing received for a minute of the test clock is silence.
  const { connection, counts } = connect(key, port, { now: () => nowMs, pingIntervalMs: 20, idleTimeoutMs: 60_000 });
  await waitFor("three sessions dropped", () => counts.down >= 3);
  control.dropping = false;
  await waitFor("a session kept up", () => connection.isReady && control.sessions.length === 1);
  const failuresBefore = connection.consecutiveFailures;
  expect(failuresBefore).toBeGreaterThanOrEqual(3);
  // Up, but not for long yet: still counted as failures.
  nowMs += SESSION_STABLE_MS - 1;
  await Bun.sleep(40);
  expect(connection.consecutiveFailures).toBe(failuresBefore);
  // Up for SESSION_STABLE_MS: the next keepalive check resets the count while it is up...
  nowMs += 1;
  await waitFor("the failure count reset", () => connection.consecutiveFailures === 0);
  // ...and its end is the first failure of a new run, retried after the first delay.
  control.dropping = true;
  control.sessions[0]?.end();
  await waitFor("the session reported down", () => counts.down === failuresBefore + 1);
  expect(connection.consecutiveFailures).toBe(1);
});
