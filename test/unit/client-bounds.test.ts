import { describe, expect, test } from "bun:test";
import { ClientClosedError, QueueFullError } from "../../src/client/errors.ts";
import { InOrder, type Settled } from "../../src/client/in-order.ts";
import { WriteQueue } from "../../src/net/write-queue.ts";
import { InflightWindow } from "../../src/client/window.ts";
import { LineSplitter } from "../../src/cli/commands/pub.ts";

const tick = () => new Promise<void>((resolve) => setTimeout(resolve, 0));
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

describe("InflightWindow", () => {
  test("grants up to its size, then queues waiters in FIFO order", async () => {
    const window = new InflightWindow(2, 10);
    await window.acquire();
    await window.acquire();
    expect(window.inUse).toBe(2);
    const order: number[] = [];
    const third = window.acquire().then(() => order.push(3));
    const fourth = window.acquire().then(() => order.push(4));
    expect(window.waiting).toBe(2);
    window.release();
    await third;
    window.release();
    await fourth;
    expect(order).toEqual([3, 4]);
    expect(window.inUse).toBe(2);
  });

  test("refuses with QueueFullError past the waiter bound", async () => {
    const window = new InflightWindow(1, 1);
    await window.acquire();
    const waiting = window.acquire();
    await expect(window.acquire()).rejects.toBeInstanceOf(QueueFullError);
    window.release();
    await waiting;
  });

  test("close rejects waiters and later calls", async () => {
    const window = new InflightWindow(1, 5);
    await window.acquire();
    const waiting = window.acquire();
    window.close();
    await expect(waiting).rejects.toBeInstanceOf(ClientClosedError);
    await expect(window.acquire()).rejects.toBeInstanceOf(ClientClosedError);
  });

  test("an unmatched release is a bug and says so", () => {
    expect(() => new InflightWindow(1, 1).release()).toThrow("without a matching acquire");
  });
});

describe("InOrder", () => {
  test("emits outcomes in push order whatever order they settle in", async () => {
    const emitted: Settled<number>[] = [];
    const inOrder = new InOrder<number>((outcome) => emitted.push(outcome), 10);
    const resolvers: ((value: number) => void)[] = [];
    const rejecters: ((error: Error) => void)[] = [];
    for (let i = 0; i < 3; i++) {
      inOrder.push(
        new Promise<number>((resolve, reject) => {
          resolvers.push(resolve);
          rejecters.push(reject);
        }),
      );
    }
    resolvers[2]!(30);
    rejecters[1]!(new Error("second failed"));
    await tick();
    expect(emitted).toEqual([]);
    resolvers[0]!(10);
    await inOrder.drained();
    expect(emitted.map((o) => (o.ok ? o.value : (o.error as Error).message))).toEqual([10, "second failed", 30]);
  });

  test("is bounded", () => {
    const inOrder = new InOrder<number>(() => undefined, 2);
    inOrder.push(new Promise(() => undefined));
    inOrder.push(new Promise(() => undefined));
    expect(inOrder.isFull).toBe(true);
    expect(() => inOrder.push(Promise.resolve(1))).toThrow(QueueFullError);
  });
});

describe("WriteQueue", () => {
  /** A socket that takes at most `capacity` bytes per write. */
  function sink(capacity: { value: number }, written: number[]) {
    return (data: Uint8Array): number => {
      const take = Math.min(capacity.value, data.byteLength);
      for (const byte of data.subarray(0, take)) written.push(byte);
      return take;
    };
  }

  test("writes through when the socket takes everything", () => {
    const buffer = new WriteQueue(100);
    const written: number[] = [];
    expect(buffer.enqueue(sink({ value: 1000 }, written), new Uint8Array([1, 2, 3]))).toBe("sent");
    expect(buffer.bufferedBytes).toBe(0);
    expect(written).toEqual([1, 2, 3]);
  });

  test("parts go to the socket one after another; the rest of the part it stopped in and the later parts wait, in order", () => {
    const parts = [new Uint8Array([1, 2, 3]), new Uint8Array([4, 5, 6, 7, 8, 9, 10, 11]), new Uint8Array(0), new Uint8Array([12, 13])];
    const all = new WriteQueue(100);
    const everything: number[] = [];
    expect(all.enqueueParts(sink({ value: 1000 }, everything), parts)).toBe("sent");
    expect(everything).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);

    const buffer = new WriteQueue(100);
    const written: number[] = [];
    const capacity = { value: 5 };
    const write = sink(capacity, written);
    expect(buffer.enqueueParts(write, parts)).toBe("queued");
    // The first part whole, 5 bytes of the second: the second's last 3 and the fourth wait.
    expect(written).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(buffer.bufferedBytes).toBe(5);
    // Behind a queue, parts are queued whole, and the bound counts them all.
    expect(buffer.enqueueParts(write, [new Uint8Array([14]), new Uint8Array([15, 16])])).toBe("queued");
    expect(buffer.enqueueParts(write, [new Uint8Array(90), new Uint8Array(10)])).toBe("full");
    expect(buffer.bufferedBytes).toBe(8);
    capacity.value = 100;
    expect(buffer.flush(write)).toBe(true);
    expect(written).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
    expect(new WriteQueue(100).enqueueParts(() => -1, parts)).toBe("closed");
    // A socket that closes after the first part: closed, and nothing of the rest is queued.
    let calls = 0;
    const closing = new WriteQueue(100);
    expect(closing.enqueueParts((data) => (calls++ === 0 ? data.byteLength : -1), parts)).toBe("closed");
    expect(closing.bufferedBytes).toBe(0);
    // A socket that stops exactly at the end of a part: the later parts wait, whole.
    const atBoundary = new WriteQueue(100);
    let taken = 0;
    expect(atBoundary.enqueueParts((data) => (taken++ === 0 ? data.byteLength : 0), parts)).toBe("queued");
    expect(atBoundary.bufferedBytes).toBe(10);
    const rest: number[] = [];
    expect(atBoundary.flush(sink({ value: 100 }, rest))).toBe(true);
    expect(rest).toEqual([4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
  });

  test("a borrowed write keeps a copy of what waits, so its caller may write over the bytes (one request sealed per replica)", () => {
    const buffer = new WriteQueue(100);
    const written: number[] = [];
    const capacity = { value: 2 };
    const write = sink(capacity, written);
    const shared = new Uint8Array([1, 2, 3, 4]);
    expect(buffer.enqueue(write, shared, true)).toBe("queued");
    shared.set([9, 9, 9, 9]);
    expect(buffer.enqueue(write, shared, true)).toBe("queued");
    shared.fill(7);
    capacity.value = 100;
    expect(buffer.flush(write)).toBe(true);
    expect(written).toEqual([1, 2, 3, 4, 9, 9, 9, 9]);
    // Not borrowed: what waits is the caller's own array.
    const own = new WriteQueue(100);
    const ownWritten: number[] = [];
    const ownCapacity = { value: 0 };
    const bytes = new Uint8Array([1, 2]);
    expect(own.enqueue(sink(ownCapacity, ownWritten), bytes)).toBe("queued");
    bytes[0] = 5;
    ownCapacity.value = 100;
    own.flush(sink(ownCapacity, ownWritten));
    expect(ownWritten).toEqual([5, 2]);
  });

  test("keeps the unwritten rest, in order, and flushes it on drain", () => {
    const buffer = new WriteQueue(100);
    const written: number[] = [];
    const capacity = { value: 2 };
    const write = sink(capacity, written);
    expect(buffer.enqueue(write, new Uint8Array([1, 2, 3, 4, 5]))).toBe("queued");
    expect(buffer.enqueue(write, new Uint8Array([6, 7]))).toBe("queued");
    expect(buffer.bufferedBytes).toBe(5);
    capacity.value = 2;
    expect(buffer.flush(write)).toBe(false);
    capacity.value = 100;
    expect(buffer.flush(write)).toBe(true);
    expect(written).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(buffer.bufferedBytes).toBe(0);
  });

  test("refuses past its bound without writing, but an idle connection takes one large frame", () => {
    const buffer = new WriteQueue(10);
    const written: number[] = [];
    const stuck = sink({ value: 0 }, written);
    expect(buffer.enqueue(stuck, new Uint8Array(25))).toBe("queued");
    expect(buffer.enqueue(stuck, new Uint8Array(1))).toBe("full");
    expect(buffer.hasRoomFor(1)).toBe(false);
    expect(buffer.bufferedBytes).toBe(25);
    buffer.clear();
    expect(buffer.enqueue(stuck, new Uint8Array(8))).toBe("queued");
    expect(buffer.enqueue(stuck, new Uint8Array(2))).toBe("queued");
    expect(buffer.enqueue(stuck, new Uint8Array(1))).toBe("full");
  });

  test("reports a closed socket", () => {
    const buffer = new WriteQueue(10);
    expect(buffer.enqueue(() => -1, new Uint8Array(3))).toBe("closed");
    expect(buffer.bufferedBytes).toBe(0);
  });
});

describe("LineSplitter (fitb pub's stdin)", () => {
  test("splits on \\n and \\r\\n across chunk boundaries, bytes unchanged", () => {
    const splitter = new LineSplitter(100);
    const lines = [
      ...splitter.push(new TextEncoder().encode("eth0 down\r\neth1")),
      ...splitter.push(new TextEncoder().encode(" up\n\nlast")),
      ...splitter.finish(),
    ];
    expect(lines.map((line) => (line.ok ? text(line.bytes) : `TOO LONG ${line.length}`))).toEqual(["eth0 down", "eth1 up", "", "last"]);
  });

  test("keeps non-UTF-8 bytes as they are", () => {
    const splitter = new LineSplitter(100);
    const [line] = splitter.push(new Uint8Array([0xff, 0x00, 0xfe, 0x0a]));
    expect(line).toEqual({ ok: true, bytes: new Uint8Array([0xff, 0x00, 0xfe]) });
  });

  test("a line over the bound is refused with its length, and memory stays bounded", () => {
    const splitter = new LineSplitter(4);
    const lines = [...splitter.push(new TextEncoder().encode("abcd\nabcdefgh")), ...splitter.push(new TextEncoder().encode("ij\nok\n"))];
    expect(lines.map((line) => (line.ok ? text(line.bytes) : `TOO LONG ${line.length}`))).toEqual(["abcd", "TOO LONG 10", "ok"]);
  });

  test("nothing after a final newline means no extra line", () => {
    const splitter = new LineSplitter(10);
    splitter.push(new TextEncoder().encode("a\n"));
    expect(splitter.finish()).toEqual([]);
  });
});
