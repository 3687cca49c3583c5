/**
 * One replica process per data directory: the store holds its database's lock for the
 * life of the process, a second process is refused with a clear error, and the lock goes
 * with the process, kill -9 included.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { realDisk } from "../../src/replica/storage/disk.ts";
import { LOCK_FILE, ReplicaStore, StoreInUseError } from "../../src/replica/storage/store.ts";

const dir = mkdtempSync(join(tmpdir(), "fitb-lock-"));
const STORE_MODULE = resolve(import.meta.dir, "../../src/replica/storage/store.ts");
const DISK_MODULE = resolve(import.meta.dir, "../../src/replica/storage/disk.ts");
const identity = { cluster: "lock-test", replica: 0 };

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * A process holding the store of `dir` open (with a shared log: as a replica with a
 * checkpoint thread does), until killed. It keeps the store referenced: a collected store
 * closes its database, and its lock with it.
 */
async function holder(sharedLog: boolean): Promise<Bun.Subprocess<"ignore", "pipe", "inherit">> {
  const proc = Bun.spawn(
    [
      process.execPath,
      "-e",
      `const { ReplicaStore } = await import(${JSON.stringify(STORE_MODULE)}); const { realDisk } = await import(${JSON.stringify(DISK_MODULE)}); globalThis.held = ReplicaStore.open(${JSON.stringify(dir)}, "full", ${JSON.stringify(identity)}, true, realDisk, ${sharedLog}); console.log("ready"); await Bun.sleep(60_000);`,
    ],
    { stdout: "pipe", stderr: "inherit" },
  );
  const first = await proc.stdout.getReader().read();
  expect(new TextDecoder().decode(first.value)).toContain("ready");
  return proc;
}

describe("the data directory lock", () => {
  test("a second process is refused while the first runs, and may open it once the first was killed", async () => {
    const first = await holder(false);
    expect(() => ReplicaStore.open(dir, "full", identity)).toThrow(StoreInUseError);
    expect(() => ReplicaStore.open(dir, "full", identity, true, realDisk, true)).toThrow(StoreInUseError);
    first.kill("SIGKILL");
    await first.exited;
    const store = ReplicaStore.open(dir, "full", identity);
    store.close();
  }, 30_000);

  test("with a shared log (a checkpoint thread beside it), the lock file refuses a second process either way, and goes with a kill", async () => {
    const first = await holder(true);
    expect(existsSync(join(dir, LOCK_FILE))).toBe(true);
    expect(() => ReplicaStore.open(dir, "full", identity, true, realDisk, true)).toThrow(StoreInUseError);
    // An older build takes the database's own exclusive lock: refused too, the first holds it shared.
    expect(() => ReplicaStore.open(dir, "full", identity)).toThrow(StoreInUseError);
    first.kill("SIGKILL");
    await first.exited;
    const store = ReplicaStore.open(dir, "full", identity, true, realDisk, true);
    store.close();
  }, 30_000);
});
