/**
 * One replica process per data directory: the store holds its database's lock for the
 * life of the process, a second process is refused with a clear error, and the lock goes
 * with the process, kill -9 included. The read before a start (readMetaOnly) is refused the
 * same way.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { ReplicaStore, readMetaOnly, StoreInUseError } from "../../src/replica/storage/store.ts";

const dir = mkdtempSync(join(tmpdir(), "fitb-lock-"));
const STORE_MODULE = resolve(import.meta.dir, "../../src/replica/storage/store.ts");
const identity = { cluster: "lock-test", replica: 0 };

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("the data directory lock", () => {
  test("a second process is refused while the first runs, and may open it once the first was killed", async () => {
    const holder = Bun.spawn(
      [
        process.execPath,
        "-e",
        `const { ReplicaStore } = await import(${JSON.stringify(STORE_MODULE)}); ReplicaStore.open(${JSON.stringify(dir)}, "full", ${JSON.stringify(identity)}); console.log("ready"); await Bun.sleep(60_000);`,
      ],
      { stdout: "pipe", stderr: "inherit" },
    );
    const reader = holder.stdout.getReader();
    const first = await reader.read();
    expect(new TextDecoder().decode(first.value)).toContain("ready");
    expect(() => ReplicaStore.open(dir, "full", identity)).toThrow(StoreInUseError);
    // So is the read-only read of a meta value made before a start.
    expect(() => readMetaOnly(dir, identity, "epoch")).toThrow(StoreInUseError);
    holder.kill("SIGKILL");
    await holder.exited;
    const store = ReplicaStore.open(dir, "full", identity);
    store.close();
  }, 30_000);
});
