// The `core` table (the ordering core's vote, checkpoint, stable, view and snapshot
// records) has no index besides its row id (store.ts, DROPPED_INDEXES): each record's
// commit writes one page to the write-ahead log, and deletes by kind and seq scan the
// table's few hundred rows.
import { Database } from "bun:sqlite";
import { afterEach, expect, test } from "bun:test";
import { statSync } from "node:fs";
import { join } from "node:path";
import { ReplicaStore, STORE_FILE, STORE_PAGE_BYTES } from "../../src/replica/storage/store.ts";
import { tempDir } from "./storage-fixtures.ts";

const identity = { cluster: "core-rows", replica: 0 };
/** A write-ahead log frame: a 24-byte header and one page. */
const FRAME_BYTES = 24 + STORE_PAGE_BYTES;

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

function indexes(path: string): string[] {
  const db = new Database(path, { readonly: true });
  try {
    const rows = db.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'core'").all() as { name: string }[];
    return rows.map((row) => row.name);
  } finally {
    db.close();
  }
}

test("a vote record's commit writes one page of the log: the accept and prepared records of many seqs, one commit each", () => {
  const t = tempDir("fitb-core-rows-");
  cleanups.push(t.remove);
  const store = ReplicaStore.open(t.dir, "normal", identity);
  cleanups.push(() => store.close());
  const wal = join(t.dir, `${STORE_FILE}-wal`);
  const rec = new Uint8Array(300).fill(7);
  // Past the first commits (the schema, the first pages of the table).
  for (let seq = 1; seq <= 4; seq++) store.transactionWritten(() => void store.insertCore("accept", seq, rec));
  const before = statSync(wal).size;
  const commits = 40;
  for (let seq = 5; seq < 5 + commits / 2; seq++) {
    store.transactionWritten(() => void store.insertCore("accept", seq, rec));
    store.transactionWritten(() => void store.insertCore("prepared", seq, rec));
  }
  const frames = (statSync(wal).size - before) / FRAME_BYTES;
  // One leaf a commit, and now and then a split of the table's last leaf: with an index on
  // (kind, seq) each commit wrote a second page (at least 80 frames here).
  expect(frames).toBeGreaterThanOrEqual(commits);
  expect(frames).toBeLessThan(commits * 1.25);
  // Deletes by kind and seq still find their rows.
  store.transactionWritten(() => {
    store.deleteCoreUpTo("accept", 20);
    store.deleteCoreUpTo("prepared", 10);
  });
  const kinds = new Map<string, number[]>();
  for (const row of store.coreRows()) {
    if (!row.ok) throw new Error("a corrupt row");
    kinds.set(row.row.kind, [...(kinds.get(row.row.kind) ?? []), row.row.seq]);
  }
  expect(kinds.get("accept")).toEqual([21, 22, 23, 24]);
  expect(kinds.get("prepared")).toEqual(Array.from({ length: 14 }, (_, i) => 11 + i));
});

test("a store made with the former (kind, seq) index loses it at open, and its rows stay", () => {
  const t = tempDir("fitb-core-rows-");
  cleanups.push(t.remove);
  const first = ReplicaStore.open(t.dir, "normal", identity);
  first.transactionWritten(() => void first.insertCore("view", 3, new Uint8Array([1, 2, 3])));
  first.close();
  const path = join(t.dir, STORE_FILE);
  const old = new Database(path);
  old.exec("CREATE INDEX core_kind_seq ON core (kind, seq)");
  old.close();
  expect(indexes(path)).toEqual(["core_kind_seq"]);
  const reopened = ReplicaStore.open(t.dir, "normal", identity);
  const rows = [...reopened.coreRows()].map((row) => (row.ok ? [row.row.kind, row.row.seq] : null));
  reopened.close();
  expect(rows).toEqual([["view", 3]]);
  expect(indexes(path)).toEqual([]);
});
