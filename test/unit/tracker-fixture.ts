// A RequestTracker (src/client/request-tracker.ts) over four fake replica connections:
// each hands what it is sent, as a REQUEST frame decoded, to the test's `onSent`.
import { expect } from "bun:test";
import type { ReplicaConnection } from "../../src/client/connection.ts";
import { ExecutedFloor } from "../../src/client/executed-floor.ts";
import type { TrackingContext } from "../../src/client/replica-group.ts";
import { type CrashNoneTargets, RequestTracker, type RequestTiming } from "../../src/client/request-tracker.ts";
import { CLIENT_FRAME_MAC_BYTES } from "../../src/crypto/session.ts";
import type { RequestFrame } from "../../wire/schemas.ts";
import { decodeFrameBody } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";

export interface TrackerFixture {
  readonly tracker: RequestTracker;
  /** The client's read-your-writes floor the tracker reads. */
  readonly floor: ExecutedFloor;
  /** Replicas whose connection has no room: their sendShared takes nothing. */
  readonly full: Set<number>;
}

export interface TrackerFixtureOptions {
  /** One REQUEST a connection took: the replica, the frame, and the bytes and digest it was handed. */
  readonly onSent: (replica: number, frame: RequestFrame, bytes: Uint8Array, digest: Uint8Array) => void;
  readonly timing: RequestTiming;
  readonly now?: () => number;
  readonly wakeAt?: (atMs: number) => void;
  /** Replicas with a session up (default all four). */
  readonly ready?: () => number[];
  readonly crashNoneTargets?: CrashNoneTargets;
}

export function trackerFixture(options: TrackerFixtureOptions): TrackerFixture {
  const full = new Set<number>();
  const connections = [0, 1, 2, 3].map(
    (id) =>
      ({
        id,
        isReady: true,
        sendShared(bytes: Uint8Array, digest: Uint8Array): boolean {
          if (full.has(id)) return false;
          // What a connection seals: the frame, its length counting the MAC room at its end.
          expect(new DataView(bytes.buffer, bytes.byteOffset).getUint32(0)).toBe(bytes.length - 4);
          expect(bytes[4]).toBe(FrameType.REQUEST);
          const decoded = decodeFrameBody(FrameType.REQUEST, bytes.subarray(5, bytes.length - CLIENT_FRAME_MAC_BYTES));
          if (!decoded.ok || decoded.frame.type !== FrameType.REQUEST) throw new Error("not a REQUEST frame");
          options.onSent(id, decoded.frame.body, bytes, digest);
          return true;
        },
      }) as unknown as ReplicaConnection,
  );
  const group = {
    f: 1,
    slots: 4,
    connections,
    connection: (id: number) => connections[id],
    readyReplicas: options.ready ?? (() => [0, 1, 2, 3]),
    has: (id: number) => id >= 0 && id < 4,
  };
  const floor = new ExecutedFloor(group);
  const ctx = {
    group,
    floor,
    frameBytesMax: 1 << 20,
    now: options.now ?? (() => 0),
    log: () => {},
    ...(options.wakeAt === undefined ? {} : { wakeAt: options.wakeAt }),
  } as unknown as TrackingContext;
  return { tracker: new RequestTracker(ctx, options.timing, options.crashNoneTargets), floor, full };
}
