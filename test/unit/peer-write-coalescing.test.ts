/**
 * A peer link writes the PEER frames of one event-loop turn with one socket write at the
 * turn's end (FramedConn.coalesceWrites, set by the mesh once the link's handshake is
 * done): a step's votes to a peer, or the effects one fsync releases, cost one system
 * call per peer instead of one per frame. A large message (a proposal) still goes to the
 * socket from where it is, in three parts, after whatever the turn sent before it, and
 * the byte stream is always the frames in the order they were sent.
 */
import { describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { SigningKey } from "../../src/crypto/keys.ts";
import { FramedConn } from "../../src/replica/framed.ts";
import { encodePeerFrame, peerFrameParts } from "../../wire/hot.ts";
import { FRAME_BYTES_MAX } from "../../wire/types.ts";
import { concat, nextTurn } from "./sealed-wire.ts";
import { entry, freePort, type MeshNode, send, startNode, up } from "./peer-mesh-fixture.ts";
import { waitFor } from "../helpers/wait.ts";

interface PeerWire {
  readonly conn: FramedConn;
  /** Every socket write, in order (what the socket took of it). */
  readonly writes: Uint8Array[];
  /** Bytes the socket takes before it is full; each write uses some up. */
  room: number;
  /** The socket's writes throw. */
  failing: boolean;
}

/** A peer link's FramedConn as after its handshake (no session framing, coalescing), over a socket that records its writes. */
function peerWire(): PeerWire {
  const writes: Uint8Array[] = [];
  const self: { conn: FramedConn | null; writes: Uint8Array[]; room: number; failing: boolean } = {
    conn: null,
    writes,
    room: Number.POSITIVE_INFINITY,
    failing: false,
  };
  const socket = {
    remoteAddress: "127.0.0.1",
    write: (bytes: Uint8Array) => {
      if (self.failing) throw new Error("the socket failed");
      const taken = bytes.subarray(0, Math.min(bytes.length, self.room));
      self.room -= taken.length;
      if (taken.length > 0) writes.push(Uint8Array.from(taken));
      return taken.length;
    },
    end() {},
    flush() {},
  };
  self.conn = new FramedConn(socket as unknown as Socket<unknown>, FRAME_BYTES_MAX);
  self.conn.coalesceWrites();
  return self as PeerWire;
}

const MAC = new Uint8Array(32).fill(7);
const message = (bytes: number, fill: number): Uint8Array => new Uint8Array(bytes).fill(fill);

describe("a peer link's writes", () => {
  test("the frames of one turn go to the socket in one write at its end, in the order they were sent", async () => {
    const w = peerWire();
    const frames = [1, 2, 3, 4].map((i) => encodePeerFrame(i, message(200, i), MAC));
    for (const frame of frames) expect(w.conn.sendEncoded(frame)).toBe(true);
    expect(w.writes).toHaveLength(0);
    await nextTurn();
    expect(w.writes).toHaveLength(1);
    expect(w.writes[0]).toEqual(concat(frames));
    expect(w.conn.pendingBytes).toBe(0);
  });

  test("a large message sent after small ones: the small ones are written first, then its parts from where they are; a frame after it waits for the turn's end", async () => {
    const w = peerWire();
    const before = [encodePeerFrame(1, message(200, 1), MAC), encodePeerFrame(2, message(200, 2), MAC)];
    const large = peerFrameParts(3, message(64 * 1024, 3), MAC);
    const after = encodePeerFrame(4, message(200, 4), MAC);
    for (const frame of before) w.conn.sendEncoded(frame);
    expect(w.conn.sendEncodedParts(large)).toBe(true);
    // The small frames in one write, then each part as it is: not copied into a frame.
    expect(w.writes.map((write) => write.length)).toEqual([concat(before).length, ...large.map((p) => p.length)]);
    w.conn.sendEncoded(after);
    expect(w.writes).toHaveLength(4);
    await nextTurn();
    expect(w.writes).toHaveLength(5);
    expect(concat(w.writes)).toEqual(concat([...before, ...large, after]));
  });

  test("while the socket pushes back, a large message waits behind what waits, and the stream after the drains is every frame in order", async () => {
    const w = peerWire();
    const sent: Uint8Array[] = [];
    w.room = 300;
    for (let i = 1; i <= 3; i++) {
      const frame = encodePeerFrame(i, message(200, i), MAC);
      sent.push(frame);
      w.conn.sendEncoded(frame);
    }
    await nextTurn();
    // The socket took 300 bytes of the turn's write: the rest waits.
    expect(concat(w.writes).length).toBe(300);
    const large = peerFrameParts(4, message(32 * 1024, 4), MAC);
    sent.push(...large);
    expect(w.conn.sendEncodedParts(large)).toBe(true);
    const small = encodePeerFrame(5, message(100, 5), MAC);
    sent.push(small);
    w.conn.sendEncoded(small);
    // Nothing was written past the socket's room.
    expect(concat(w.writes).length).toBe(300);
    for (let drains = 0; w.conn.pendingBytes > 0; drains++) {
      expect(drains).toBeLessThan(100);
      w.room = 4096;
      w.conn.drain();
      await nextTurn();
    }
    expect(concat(w.writes)).toEqual(concat(sent));
  });

  test("a write that fails while a large message waits to follow ends the connection, and the message is refused, not written", () => {
    const w = peerWire();
    w.conn.sendEncoded(encodePeerFrame(1, message(200, 1), MAC));
    w.failing = true;
    expect(w.conn.sendEncodedParts(peerFrameParts(2, message(32 * 1024, 2), MAC))).toBe(false);
    expect(w.conn.isClosed).toBe(true);
    expect(w.writes).toHaveLength(0);
    expect(w.conn.pendingBytes).toBe(0);
  });
});

describe("two meshes over loopback", () => {
  test("messages sent in one turn, a large one among them, arrive whole and in order", async () => {
    const keys = [SigningKey.generate(), SigningKey.generate()];
    const ports = [freePort(), freePort()];
    const file = keys.map((key, id) => entry(id, key, ports[id] as number));
    const nodes = keys.map((key, id) => startNode(id, key, ports[id] as number, file));
    const [a, b] = nodes as [MeshNode, MeshNode];
    try {
      await waitFor("the link from 0 to 1 is up", () => up(a, 1));
      const texts: string[] = [];
      for (let i = 0; i < 20; i++) texts.push(`small ${i}`);
      texts.push(`large ${"x".repeat(100 * 1024)}`);
      for (let i = 20; i < 40; i++) texts.push(`small ${i}`);
      for (const text of texts) expect(send(a, 1, text)).toBe(true);
      await waitFor(
        "node 1 has every message",
        () => b.received.length >= texts.length,
        undefined,
        () => `${b.received.length} of ${texts.length}`,
      );
      expect(b.received).toEqual(texts.map((text) => ({ from: 0, text })));

      // The link coalesces: 40 messages sent in one turn take one socket write, counted.
      const writesBefore = a.metrics.get("peer_socket_writes_total");
      const sentBefore = a.metrics.get("peer_messages_sent_total");
      for (let i = 0; i < 40; i++) expect(send(a, 1, `turn ${i}`)).toBe(true);
      await nextTurn();
      expect(a.metrics.get("peer_messages_sent_total") - sentBefore).toBe(40);
      expect(a.metrics.get("peer_socket_writes_total") - writesBefore).toBe(1);
      await waitFor("node 1 has the turn's messages", () => b.received.length >= texts.length + 40);
    } finally {
      for (const node of nodes) node.stop();
    }
  });
});
