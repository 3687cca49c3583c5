// A batch's digest is computed once per replica on its way from proposal to execution
// (src/core/ordering/certs.ts, digestOfBatch): the leader hashes it when it proposes, a
// backup when it checks the proposal, and neither hashes it again before executing it.
import { describe, expect, test } from "bun:test";
import { bytesEqual } from "../../wire/bytes.ts";
import { batchBytes, type ClientRequest, digestOfBatch, OrderingCore } from "../../src/core/ordering/index.ts";
import type { CoreCrypto } from "../../src/core/ordering/types.ts";
import { ManualCluster } from "../../src/sim/cluster.ts";

describe("batch digests", () => {
  test("each replica hashes a decided batch once, from proposal to execution", () => {
    const hashed: Uint8Array[][] = [[], [], [], []];
    const c = new ManualCluster({
      crypto: "fast",
      factory: (cfg, crypto, restored) => {
        const counted: CoreCrypto = {
          ...crypto,
          hash: (bytes) => {
            hashed[cfg.id]?.push(bytes.slice());
            return crypto.hash(bytes);
          },
        };
        return new OrderingCore(cfg, counted, restored);
      },
    });
    c.submit(0, c.request(0, 1));
    c.tick();
    c.deliverAll();
    for (let id = 0; id < 4; id++) {
      const decided = c.decided[id] ?? [];
      expect(decided.map((d) => d.seq)).toEqual([1]);
      const bytes = batchBytes((decided[0] as { batch: ClientRequest[] }).batch);
      expect((hashed[id] ?? []).filter((h) => bytesEqual(h, bytes)).length).toBe(1);
    }
  });

  test("a batch equal in content but another array, or another hash function, is hashed afresh", () => {
    const c = new ManualCluster({ crypto: "fast" });
    const batch = [c.request(0, 1)];
    let calls = 0;
    const counting =
      (salt: number) =>
      (bytes: Uint8Array): Uint8Array => {
        calls++;
        return new Uint8Array(32).fill((salt + bytes.length) & 0xff);
      };
    const crypto = { hash: counting(0) } as unknown as CoreCrypto;
    const other = { hash: counting(1) } as unknown as CoreCrypto;
    const first = digestOfBatch(crypto, batch);
    expect(digestOfBatch(crypto, batch)).toBe(first);
    expect(calls).toBe(1);
    expect(digestOfBatch(crypto, [...batch])).toEqual(first);
    expect(calls).toBe(2);
    expect(digestOfBatch(other, batch)).not.toEqual(first);
    expect(calls).toBe(3);
  });
});
