// The write-ahead log is copied into the database file once it passes
// WAL_AUTOCHECKPOINT_PAGES (store.ts), not SQLite's default 16 MiB: a commit that
// checkpoints stops the event loop for as long as the copy and its syncs take.
import { afterEach, expect, test } from "bun:test";
import { statSync } from "node:fs";
import { join } from "node:path";
import { STORE_FILE, STORE_PAGE_BYTES, WAL_AUTOCHECKPOINT_PAGES } from "../../src/replica/storage/store.ts";
import { decidedRecord, openStorage, TestClient, tempDir } from "./storage-fixtures.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

test("the log is copied into the database file and restarted once it passes WAL_AUTOCHECKPOINT_PAGES, not SQLite's default 16 MiB", () => {
  const t = tempDir("fitb-wal-");
  cleanups.push(t.remove);
  const storage = openStorage(t.dir);
  cleanups.push(() => storage.close());
  const walBytes = WAL_AUTOCHECKPOINT_PAGES * STORE_PAGE_BYTES;
  const defaultBytes = 1_000 * STORE_PAGE_BYTES;
  expect(3 * walBytes).toBeLessThan(defaultBytes);
  // Three times the bound in decisions of 64 KiB, one commit each.
  const client = new TestClient();
  let largest = 0;
  for (let seq = 1; seq * 64 * 1024 <= 3 * walBytes; seq++) {
    storage.persist(decidedRecord(client, seq, `${seq} ${"x".repeat(64 * 1024)}`));
    storage.commits.flush();
    largest = Math.max(largest, statSync(join(t.dir, `${STORE_FILE}-wal`)).size);
  }
  // The log file is reused from its start after each checkpoint: it never grew much past the bound.
  expect(largest).toBeLessThan(2 * walBytes);
  expect(largest).toBeGreaterThan(walBytes / 2);
});
