// The system channels' subscription caps (src/replica/sys-channels.ts): per connection, per
// remote address, and at the replica. One host opening sessions under throwaway keys must
// not take every slot from the operators' consoles elsewhere.
import { describe, expect, test } from "bun:test";
import { SigningKey } from "../../src/crypto/keys.ts";
import {
  SYS_SUBSCRIPTIONS_MAX,
  SYS_SUBSCRIPTIONS_PER_ADDRESS_MAX,
  SYS_SUBSCRIPTIONS_PER_SESSION_MAX,
  SysChannels,
} from "../../src/replica/sys-channels.ts";
import type { Frame } from "../../wire/schemas.ts";
import { FrameType } from "../../wire/types.ts";
import { recordingSession } from "./recording-session.ts";

function sysChannels(): SysChannels {
  return new SysChannels({ self: 0, members: () => [{ id: 0, key: new Uint8Array(32) }], key: SigningKey.generate(), health: () => ({}) });
}

/** The SUB_END reasons among `frames`. */
function ends(frames: readonly Frame[]): string[] {
  return frames.flatMap((frame) => (frame.type === FrameType.SUB_END ? [`${frame.body.code} ${frame.body.reason}`] : []));
}

describe("system subscriptions per remote address", () => {
  test("one address holds at most its share; another address still subscribes; a freed slot is taken again", () => {
    const sys = sysChannels();
    const sessionsPerAddress = SYS_SUBSCRIPTIONS_PER_ADDRESS_MAX / SYS_SUBSCRIPTIONS_PER_SESSION_MAX + 1;
    const flood: Frame[] = [];
    const floodSessions = Array.from({ length: sessionsPerAddress }, (_, i) => recordingSession(i + 1, flood, "10.0.0.66"));
    for (const session of floodSessions)
      for (let sub = 1; sub <= SYS_SUBSCRIPTIONS_PER_SESSION_MAX; sub++) sys.subscribe(session, sub, "$sys.events");
    expect(sys.count).toBe(SYS_SUBSCRIPTIONS_PER_ADDRESS_MAX);
    const refused = ends(flood);
    expect(refused.length).toBe(SYS_SUBSCRIPTIONS_PER_SESSION_MAX);
    expect(refused[0]).toBe(`LIMIT at most ${SYS_SUBSCRIPTIONS_PER_ADDRESS_MAX} system subscriptions per remote address (10.0.0.66)`);

    const console: Frame[] = [];
    const operator = recordingSession(9_999, console, "10.0.0.7");
    sys.subscribe(operator, 1, "$sys.events");
    expect(console.map((frame) => frame.type)).toEqual([FrameType.SUB_OK]);
    expect(sys.count).toBe(SYS_SUBSCRIPTIONS_PER_ADDRESS_MAX + 1);

    // Freed by a closed connection: the address may subscribe again.
    sys.dropSession(floodSessions[0] as ReturnType<typeof recordingSession>);
    const again: Frame[] = [];
    sys.subscribe(recordingSession(5_000, again, "10.0.0.66"), 1, "$sys.events");
    expect(again.map((frame) => frame.type)).toEqual([FrameType.SUB_OK]);
  });

  test("the replica-wide cap still holds across addresses", () => {
    const sys = sysChannels();
    const frames: Frame[] = [];
    const addresses = SYS_SUBSCRIPTIONS_MAX / SYS_SUBSCRIPTIONS_PER_ADDRESS_MAX + 1;
    let id = 0;
    for (let a = 0; a < addresses; a++) {
      for (let s = 0; s < SYS_SUBSCRIPTIONS_PER_ADDRESS_MAX / SYS_SUBSCRIPTIONS_PER_SESSION_MAX; s++) {
        const session = recordingSession(++id, frames, `10.0.1.${a}`);
        for (let sub = 1; sub <= SYS_SUBSCRIPTIONS_PER_SESSION_MAX; sub++) sys.subscribe(session, sub, "$sys.events");
      }
    }
    expect(sys.count).toBe(SYS_SUBSCRIPTIONS_MAX);
    expect(ends(frames).every((end) => end === `LIMIT at most ${SYS_SUBSCRIPTIONS_MAX} system subscriptions at this replica`)).toBe(true);
    expect(ends(frames).length).toBe(SYS_SUBSCRIPTIONS_PER_ADDRESS_MAX);
  });
});
