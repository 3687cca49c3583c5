// What a console tail holds for a slow page (src/cli/console/tail-buffer.ts): never more
// than its byte budget; past it events are dropped and counted, and the page is told in
// a "dropped" notice; one chunk at a time is in flight.
import { describe, expect, test } from "bun:test";
import { noticeReason, sseMessage, TAIL_NOTICE_BYTES_MAX, TAIL_NOTICES_MAX, TailBuffer } from "../../src/cli/console/tail-buffer.ts";

const BUDGET = 16_384;
const event = (i: number) => sseMessage("event", { seq: i, payload: "x".repeat(200) });

describe("tail buffer", () => {
  test("events past the budget (less the notices' room) are dropped and counted; the page is told", () => {
    const buffer = new TailBuffer(BUDGET);
    buffer.offerNotice(sseMessage("ready", { tag: "net.links" }));
    let accepted = 0;
    for (let i = 0; i < 200; i++) if (buffer.offer("event", event(i))) accepted++;
    expect(accepted).toBeGreaterThan(0);
    expect(buffer.droppedEvents).toBe(200 - accepted);
    expect(buffer.heldBytes).toBeLessThanOrEqual(BUDGET - TAIL_NOTICES_MAX * TAIL_NOTICE_BYTES_MAX);
    const chunk = buffer.take() as string;
    expect(chunk).toStartWith("event: ready\n");
    expect(chunk).toEndWith(
      `event: dropped\ndata: ${JSON.stringify({ count: 200 - accepted, reason: `${200 - accepted} events dropped: the page did not keep up` })}\n\n`,
    );
    // In flight, the chunk still counts: nothing more fits until it drained.
    expect(buffer.offer("event", event(999))).toBe(false);
    expect(buffer.heldBytesPeak).toBeLessThanOrEqual(BUDGET);
    buffer.drained();
    expect(buffer.heldBytes).toBe(0);
    expect(buffer.offer("event", event(1000))).toBe(true);
    expect(buffer.take()).toStartWith("event: event\n");
  });

  test("a dropped vouch is not counted as a dropped event", () => {
    const buffer = new TailBuffer(BUDGET);
    const vouch = sseMessage("vouch", { batch: 1, vouchers: [0, 1] });
    while (buffer.offer("vouch", vouch));
    expect(buffer.offer("vouch", vouch)).toBe(false);
    expect(buffer.droppedEvents).toBe(0);
    expect(buffer.take()).not.toContain("event: dropped");
  });

  test("one chunk in flight at a time; nothing queued gives null", () => {
    const buffer = new TailBuffer(BUDGET);
    expect(buffer.take()).toBeNull();
    buffer.offer("event", event(1));
    buffer.take();
    expect(() => buffer.take()).toThrow("in flight");
  });

  test("notices are bounded: a long reason is cut", () => {
    const buffer = new TailBuffer(BUDGET);
    const reason = noticeReason("y".repeat(10_000));
    expect(reason.length).toBeLessThan(100);
    buffer.offerNotice(sseMessage("end", { reason }));
    expect(() => buffer.offerNotice(sseMessage("end", { reason: "y".repeat(10_000) }))).toThrow("exceeds");
  });
});
