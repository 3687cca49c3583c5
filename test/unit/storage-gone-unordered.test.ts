// The rows of unordered channels that no longer exist (src/replica/storage/index.ts
// dropGoneUnordered): deleted from the store a slice per commit, with their publishers'
// floors after the last slice, while the rows of channels that exist, and of channels made
// past the machine's last generation (kept for a state that makes them), stay.
import { afterEach, expect, test } from "bun:test";
import { sha256 } from "../../src/crypto/hash.ts";
import { Metrics } from "../../src/replica/metrics.ts";
import { ReplicaStorage, TRIM_ROWS_PER_COMMIT } from "../../src/replica/storage/index.ts";
import { openStorage, tempDir, testLog } from "./storage-fixtures.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

const SIG = new Uint8Array(64).fill(3);
const PUBLISHER = new Uint8Array(32).fill(9);

/** Rows stored per channel, by `gen:tag`. */
function rowsByChannel(storage: ReplicaStorage): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const checked of storage.store.unorderedRows()) {
    if (!checked.ok) throw new Error("a damaged row");
    const key = `${checked.row.gen}:${checked.row.tag}`;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}

function floorsByChannel(storage: ReplicaStorage): string[] {
  return [...storage.store.unorderedFloorRows()].map((checked) => (checked.ok ? `${checked.row.gen}:${checked.row.tag}` : "damaged"));
}

test("a gone unordered channel's rows are deleted a slice per commit, then its floors, and the others' stay", () => {
  const t = tempDir();
  cleanups.push(t.remove);
  const turns: (() => void)[] = [];
  const log = testLog();
  const storage = ReplicaStorage.open({
    dir: t.dir,
    sync: "full",
    cluster: "unit",
    replica: 0,
    log,
    metrics: new Metrics(),
    afterTurn: (run) => void turns.push(run),
  });
  cleanups.push(() => storage.close());
  const store = (tag: string, gen: number, count: number): void => {
    for (let i = 0; i < count; i++) {
      const body = new TextEncoder().encode(`${tag} ${gen} event ${i}`);
      storage.recordUnordered(tag, gen, 1000 + i, body, SIG, sha256(body));
    }
    storage.trimUnordered(tag, gen, 0, [{ publisher: PUBLISHER, through: count }]);
  };
  // net.links of generation 2 was destroyed and made again as generation 4; net.gone of
  // generation 3 was destroyed; net.later of generation 7 is past the machine (generation 5).
  store("net.links", 2, TRIM_ROWS_PER_COMMIT + 50);
  store("net.gone", 3, 20);
  store("net.links", 4, 10);
  store("net.later", 7, 3);
  storage.commits.flush(true);
  for (const turn of turns.splice(0)) turn();
  const live = [{ tag: "net.links", gen: 4 }];
  const gone = "stored events of a channel that no longer exists deleted";

  storage.dropGoneUnordered(live, 5);
  storage.commits.flush(true);
  expect(storage.goneUnorderedPending).toBe(1);
  // One slice: the first gone channel in tag order (net.gone), then the older net.links's first rows.
  expect(rowsByChannel(storage)).toEqual({
    "2:net.links": TRIM_ROWS_PER_COMMIT + 50 - (TRIM_ROWS_PER_COMMIT - 20),
    "4:net.links": 10,
    "7:net.later": 3,
  });
  expect(floorsByChannel(storage).sort()).toEqual(["2:net.links", "4:net.links", "7:net.later"]);

  // A later turn takes the rest: the channel's floors go with its last rows. Each line is
  // logged once the commit that deleted the channel's last rows is durable.
  let ran = 0;
  while (turns.length > 0 && ran < 10) {
    (turns.shift() as () => void)();
    storage.commits.flush(true);
    ran++;
  }
  expect(turns.length).toBe(0);
  expect(storage.goneUnorderedPending).toBe(0);
  expect(rowsByChannel(storage)).toEqual({ "4:net.links": 10, "7:net.later": 3 });
  expect(floorsByChannel(storage).sort()).toEqual(["4:net.links", "7:net.later"]);
  expect(log.lines.filter((line) => line.msg === gone).map((line) => line.fields)).toEqual([
    { tag: "net.gone", generation: 3, batches: 20 },
    { tag: "net.links", generation: 2, batches: TRIM_ROWS_PER_COMMIT + 50 },
  ]);

  // Nothing gone is left: asking again stages nothing.
  storage.dropGoneUnordered(live, 5);
  expect(storage.goneUnorderedPending).toBe(0);
  // Once the machine made net.later, then destroyed it (generation 8 is its last), its rows go too.
  storage.dropGoneUnordered(live, 8);
  storage.commits.flush(true);
  for (const turn of turns.splice(0)) turn();
  expect(rowsByChannel(storage)).toEqual({ "4:net.links": 10 });
  expect(floorsByChannel(storage)).toEqual(["4:net.links"]);
});

test("a channel whose only remains are its floors loses them too", () => {
  const t = tempDir();
  cleanups.push(t.remove);
  const storage = openStorage(t.dir);
  cleanups.push(() => storage.close());
  // Retention deleted every row of the channel; its floor stayed.
  storage.trimUnordered("net.idle", 1, 0, [{ publisher: PUBLISHER, through: 40 }]);
  storage.commits.flush(true);
  expect(floorsByChannel(storage)).toEqual(["1:net.idle"]);
  expect(storage.store.unorderedChannelsStored()).toEqual([{ tag: "net.idle", gen: 1 }]);
  storage.dropGoneUnordered([], 1);
  storage.commits.flush(true);
  expect(floorsByChannel(storage)).toEqual([]);
});

test("a channel destroyed in the turn that stored its first rows loses them too", () => {
  const t = tempDir();
  cleanups.push(t.remove);
  const storage = openStorage(t.dir);
  cleanups.push(() => storage.close());
  // Stored and destroyed before any commit: the rows are only staged when the destroy executes.
  const body = new TextEncoder().encode("net.brief event");
  storage.recordUnordered("net.brief", 1, 1000, body, SIG, sha256(body));
  storage.dropGoneUnordered([], 1);
  storage.commits.flush(true);
  storage.commits.flush(true);
  expect(rowsByChannel(storage)).toEqual({});
});
