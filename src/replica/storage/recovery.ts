/**
 * Restart from the data directory (src/README.md §5): rebuild the channel state machine and
 * the ordering core's records from what the store holds, after any damaged row has been
 * dropped (index.ts). The steps:
 *
 * 1. Base: the newest complete snapshot whose parts are all intact and whose recomputed
 *    state digest equals the one recorded with it is installed into the machine. A base
 *    that fails is reported and dropped, and the next older one is tried; with none the
 *    machine starts empty.
 * 2. Decided log: the rows base+1, base+2, ... up to the first gap are replayed into the
 *    machine, with the per-client deduplication the core applies (ClientTable.executeBatch), so
 *    the machine ends exactly where the core will. Rows past a gap cannot be replayed and
 *    are deleted; the core fetches them again from its peers.
 * 3. Unordered channels: this replica's stored requests are put back in arrival order,
 *    for channels (and generations) that exist in the recovered state. A row of a
 *    generation past the machine's last (its channel was made past the recovered state,
 *    which came back short) is kept in the store for the state that has the channel
 *    (restoreKeptUnordered); a row of a channel destroyed or made again is deleted.
 * 4. Core records: the newest base the core can start from (the snapshot, or its own
 *    checkpoint at or below the stable one, as compactRecords does), the stable proof,
 *    the decisions after that base, and the surviving vote records. Records about
 *    sequence numbers past the end of the replayed log are dropped: the core must never
 *    believe it executed, or checkpointed, what the machine has not.
 *
 * What the replica lost comes back through the protocol: decisions inside the log
 * window by the core's own catch-up, older state by state transfer.
 */
import type { ChannelMachine } from "../../core/channels/machine.ts";
import { ClientTable, type ClientTableExport } from "../../core/ordering/clients.ts";
import type { ClientRequest } from "../../core/ordering/messages.ts";
import type { PersistedRecord } from "../../core/ordering/types.ts";
import { decodeRequestBody } from "../../../wire/schemas.ts";
import { bytesEqual, toHex } from "../../crypto/encoding.ts";
import { checkpointStateDigest } from "./digest.ts";
import type { ReplicaStorage, SnapshotHead } from "./index.ts";
import { type BatchLookup, type DecidedRecord, decodeBatch, readDecided, readRecord, recordBatch } from "./records.ts";
import type { Checked, CorruptRow, UnorderedFloorRow, UnorderedRow } from "./store.ts";
import { StreamReader } from "./stream.ts";

type Rec<T extends PersistedRecord["t"]> = Extract<PersistedRecord, { t: T }>;

export interface RecoverOptions {
  readonly storage: ReplicaStorage;
  readonly machine: ChannelMachine;
  /** The part size of the cluster; an incoming transfer cut differently cannot resume. */
  readonly partBytes: number;
  /** Executes a replayed decision: the requests that pass deduplication, in order. */
  readonly execute: (requests: readonly ClientRequest[], seq: number) => void;
  /** After each replayed seq, with the client table as of that seq and the stable seq (for checkpoints). */
  readonly afterSeq?: (seq: number, clients: ClientTable, stableSeq: number) => void;
}

/** An interrupted incoming state transfer that can resume at `parts`. */
export interface IncomingTransfer {
  readonly head: SnapshotHead;
  readonly parts: number;
}

export interface Recovered {
  /** Records for `new OrderingCore(cfg, crypto, records)`. */
  readonly coreRecords: PersistedRecord[];
  /** The base snapshot installed, or null. */
  readonly base: SnapshotHead | null;
  /** The last decided seq replayed into the machine (the core's lastExecuted). */
  readonly lastDecided: number;
  /** The stable checkpoint the core restarts with (0 if none). */
  readonly stableSeq: number;
  readonly incoming: IncomingTransfer | null;
  readonly replayedDecisions: number;
  readonly restoredUnordered: number;
}

export function recover(options: RecoverOptions): Recovered {
  const { storage } = options;
  const heads = storage.heads();
  const base = installBase(
    options,
    heads.filter((h) => h.status === "complete"),
  );
  const baseSeq = base?.seq ?? 0;
  const incoming = pickIncoming(
    options,
    heads.filter((h) => h.status === "incoming"),
    baseSeq,
  );
  const kept = new Set([baseSeq, incoming?.head.seq ?? -1]);
  // Parts without a head are a base whose writing a crash interrupted.
  const orphans = storage.store
    .partSeqs()
    .map((p) => p.seq)
    .filter((seq) => !heads.some((h) => h.seq === seq));
  const dropped = [...heads.map((h) => h.seq).filter((seq) => !kept.has(seq)), ...orphans];
  storage.store.transaction(() => dropped.forEach((seq) => storage.store.deleteSnapshot(seq)));

  const batches = batchLookup(storage);
  const lastDecided = decidedRunEnd(storage, baseSeq, batches.lookup);
  const core = readCoreRecords(storage, lastDecided, batches.lookup);
  // A batch no kept row names (its records were lost, or pruned before a crash) goes.
  storage.dropBatchesExcept(batches.named);
  const coreBase = pickCoreBase(base, core, lastDecided);
  const coreBaseSeq = coreBase?.seq ?? 0;
  const replay = replayDecided(options, base, lastDecided, coreBaseSeq, core.stable?.seq ?? 0, batches.lookup);
  const restoredUnordered = replayUnordered(options);

  const coreRecords: PersistedRecord[] = [];
  if (coreBase !== null) coreRecords.push(coreBase);
  if (core.stable !== null) coreRecords.push(core.stable);
  coreRecords.push(...replay.records);
  coreRecords.push(...[...core.checkpoints.values()].filter((c) => c.seq > coreBaseSeq).sort((a, b) => a.seq - b.seq));
  const stableSeq = core.stable?.seq ?? 0;
  coreRecords.push(...core.prepared.filter((p) => p.cert.seq > stableSeq));
  if (core.view !== null) coreRecords.push(core.view);
  coreRecords.push(...core.accepts.filter((a) => a.prePrepare.seq > stableSeq));
  return {
    coreRecords,
    base,
    lastDecided,
    stableSeq,
    incoming,
    replayedDecisions: lastDecided - baseSeq,
    restoredUnordered,
  };
}

// -------------------------------------------------------------------------------------
// 1. Base snapshot
// -------------------------------------------------------------------------------------

function installBase(options: RecoverOptions, complete: readonly SnapshotHead[]): SnapshotHead | null {
  for (const head of complete) {
    const importer = options.machine.beginRestore();
    const reader = new StreamReader(importer);
    const problem = readStoredStream(options.storage, head, head.parts, reader) ?? checkBase(head, reader, importer.digest.bind(importer));
    if (problem === null) {
      const installed = options.machine.installSnapshot(importer);
      if (installed.ok) {
        const meta = reader.meta;
        // The meta record is covered by the digest just checked; it is the authority.
        return meta === null ? head : { ...head, clients: meta.clients };
      }
    }
    options.storage.reportCorrupt([
      { table: "snap_part", ids: [head.seq], key: `snapshot ${head.seq}`, reason: problem ?? "does not install" },
    ]);
  }
  return null;
}

/** Feeds parts 0..parts-1 of a stored snapshot into `reader`; the problem, or null. */
function readStoredStream(storage: ReplicaStorage, head: SnapshotHead, parts: number, reader: StreamReader): string | null {
  let expected = 0;
  for (const checked of storage.store.parts(head.seq)) {
    if (expected === parts) break;
    if (!checked.ok) return checked.corrupt.reason;
    if (checked.row.part !== expected) return `part ${expected} is missing`;
    const pushed = reader.push(checked.row.data);
    if (!pushed.ok) return pushed.reason;
    expected++;
  }
  return expected === parts ? null : `part ${expected} is missing`;
}

function checkBase(head: SnapshotHead, reader: StreamReader, appDigest: () => Uint8Array): string | null {
  const finished = reader.finish();
  if (!finished.ok) return finished.reason;
  const meta = reader.meta;
  if (meta === null || meta.seq !== head.seq) return "meta record names another seq";
  const digest = checkpointStateDigest(head.seq, appDigest(), meta.clients);
  if (!bytesEqual(digest, head.stateDigest)) return "state digest does not match the one recorded";
  return null;
}

/** Keeps the newest incoming transfer above the base with its intact prefix of parts. */
function pickIncoming(options: RecoverOptions, incoming: readonly SnapshotHead[], baseSeq: number): IncomingTransfer | null {
  const head = incoming[0];
  if (head === undefined || head.seq <= baseSeq || head.partBytes !== options.partBytes) return null;
  let parts = 0;
  for (const checked of options.storage.store.parts(head.seq)) {
    if (!checked.ok || checked.row.part !== parts) break;
    parts++;
  }
  const store = options.storage.store;
  store.transaction(() => store.deletePartsFrom(head.seq, parts));
  return { head, parts };
}

// -------------------------------------------------------------------------------------
// 2. Decided log
// -------------------------------------------------------------------------------------

/**
 * The end of the contiguous run of decided rows after the base, each one decodable as the
 * decision of its seq; the rows before the base and from the first gap or bad row on are
 * deleted.
 */
function decidedRunEnd(storage: ReplicaStorage, baseSeq: number, batches: BatchLookup): number {
  let last = baseSeq;
  for (const checked of storage.store.decidedRows(baseSeq + 1)) {
    if (!checked.ok || checked.row.seq !== last + 1) break;
    const read = readDecided(checked.row.rec, checked.row.seq, batches);
    if (!read.ok) {
      storage.reportCorrupt([{ table: "decided", ids: [checked.row.seq], key: `seq ${checked.row.seq}`, reason: read.reason }]);
      break;
    }
    last = checked.row.seq;
  }
  const store = storage.store;
  store.transaction(() => {
    store.deleteDecidedUpTo(baseSeq);
    store.deleteDecidedFrom(last + 1);
  });
  return last;
}

interface Replay {
  readonly records: DecidedRecord[];
}

function replayDecided(
  options: RecoverOptions,
  base: SnapshotHead | null,
  lastDecided: number,
  keepAbove: number,
  stableSeq: number,
  batches: BatchLookup,
): Replay {
  const clients = new ClientTable();
  clients.import(base?.clients ?? []);
  const records: DecidedRecord[] = [];
  const first = (base?.seq ?? 0) + 1;
  let expected = first;
  for (const checked of options.storage.store.decidedRows(first)) {
    if (expected > lastDecided) break;
    const read = checked.ok ? readDecided(checked.row.rec, checked.row.seq, batches) : null;
    const record = read?.ok === true ? read.record : null;
    if (record === null || record.seq !== expected) {
      // Every row was checked a moment ago (decidedRunEnd): this is damage that happened
      // since. Stopping is safe; the next start cuts the log there.
      throw new RecoveryError(`decided row ${expected} cannot be replayed`);
    }
    // The core's own rule (ClientTable.executeBatch), so the machine ends where the core will.
    options.execute(clients.executeBatch(record.batch), record.seq);
    options.afterSeq?.(record.seq, clients, stableSeq);
    if (record.seq > keepAbove) records.push(record);
    options.storage.sinceBase.rows++;
    const stored = recordBatch(record);
    options.storage.sinceBase.bytes +=
      (checked.ok ? checked.row.rec.length : 0) + (stored === null ? 0 : options.storage.batchBytes(toHex(stored.digest)));
    expected++;
  }
  if (expected !== lastDecided + 1) throw new RecoveryError(`decided log ends at ${expected - 1}, expected ${lastDecided}`);
  return { records };
}

/** The store changed under recovery in a way it cannot continue from; a restart rescans. */
export class RecoveryError extends Error {
  override readonly name = "RecoveryError";
}

/** Bytes of batches kept decoded between the passes of a recovery (the decided log is read twice). */
export const RECOVERY_BATCH_CACHE_BYTES = 64 * 1024 * 1024;

/**
 * Reads batches stored apart (records.ts) for the records that name them, and notes which
 * were named: a row that names a batch stays only if its batch reads back, so the rest can go.
 * A batch read once is kept (up to RECOVERY_BATCH_CACHE_BYTES) for the second read of the
 * decided log and for the vote records of the same seqs.
 */
function batchLookup(storage: ReplicaStorage): { readonly lookup: BatchLookup; readonly named: Set<string> } {
  const named = new Set<string>();
  const cache = new Map<string, ClientRequest[]>();
  let cachedBytes = 0;
  const lookup: BatchLookup = (digest) => {
    const key = toHex(digest);
    const cached = cache.get(key);
    if (cached !== undefined) return cached;
    // Every row's checksum was checked at open; the digest checks these bytes whole.
    const data = storage.store.batchData(digest);
    if (data === null) return "batch missing";
    const batch = decodeBatch(digest, data);
    if (batch === null) return "batch does not match its digest";
    named.add(key);
    if (cachedBytes + data.length <= RECOVERY_BATCH_CACHE_BYTES) {
      cache.set(key, batch);
      cachedBytes += data.length;
    }
    return batch;
  };
  return { lookup, named };
}

// -------------------------------------------------------------------------------------
// 3. Unordered channels
// -------------------------------------------------------------------------------------

function replayUnordered(options: RecoverOptions): number {
  const restored = restoreRows(options, options.storage.store.unorderedRows());
  restoreFloors(options, options.storage.store.unorderedFloorRows());
  return restored;
}

/**
 * A channel new to the machine (`fresh`, tag and generation: a state transfer installed it,
 * or its create-channel executed after this replica started) starts with an empty local
 * store, while the data directory may still hold this replica's own acknowledged events of
 * it, kept by a start whose state came back short of the seq that made it (restoreRows).
 * Those rows go back into the machine now, as a start would put them back, so the replica
 * serves them without waiting for its next start. Returns the batches restored and the
 * channels that got any.
 */
export function restoreKeptUnordered(
  options: Pick<RecoverOptions, "machine" | "storage">,
  fresh: readonly { readonly tag: string; readonly gen: number }[],
): { readonly batches: number; readonly channels: readonly string[] } {
  let batches = 0;
  const channels: string[] = [];
  for (const channel of fresh) {
    // Only into an empty store of that very channel: rows put back into one that holds
    // events would be refused as retries and then deleted as rows it does not take.
    const info = options.machine.channelInfo(channel.tag);
    if (info === null || info.generation !== channel.gen || info.order !== "none" || info.nextSeq !== 1) continue;
    const restored = restoreRows(options, options.storage.store.unorderedRows(channel));
    restoreFloors(options, options.storage.store.unorderedFloorRows(channel));
    batches += restored;
    if (restored > 0) channels.push(channel.tag);
  }
  return { batches, channels };
}

/** The machine's unordered channels, by tag and generation. */
export function unorderedChannels(machine: ChannelMachine): { tag: string; gen: number }[] {
  return machine
    .listChannels()
    .filter((channel) => channel.order === "none")
    .map((channel) => ({ tag: channel.tag, gen: channel.generation }));
}

/**
 * The rows of unordered channels the machine no longer has (a destroy-channel executed, or
 * a state transfer installed a state without them) are deleted from the store, a slice per
 * commit (storage/index.ts dropGoneUnordered), instead of staying until the next start.
 */
export function dropGoneUnordered(options: Pick<RecoverOptions, "machine" | "storage">): void {
  options.storage.dropGoneUnordered(unorderedChannels(options.machine), options.machine.lastGeneration);
}

/**
 * Puts stored unordered rows back into the machine. A row it does not take is deleted when
 * its generation is at or below the machine's last: its channel was made within the state
 * the machine holds, so the channel is gone (destroyed, or made again under another
 * generation) and cannot come back, or the row no longer fits it. A row of a later
 * generation belongs to a channel made past that state (a start whose ordered state came
 * back short: a base that no longer installs, a decided log cut by a gap or a damaged row,
 * or one whose last writes were lost): it stays for the state that has the channel
 * (restoreKeptUnordered, or the next start), instead of being deleted as an event of a
 * channel that does not exist.
 */
function restoreRows(options: Pick<RecoverOptions, "machine" | "storage">, rows: Iterable<Checked<UnorderedRow>>): number {
  const { machine, storage } = options;
  const stale: number[] = [];
  let restored = 0;
  for (const checked of rows) {
    if (!checked.ok) {
      storage.reportCorrupt([checked.corrupt]);
      stale.push(checked.corrupt.ids[0] ?? -1);
      continue;
    }
    const row = checked.row;
    const decoded = decodeRequestBody(row.body);
    if (!decoded.ok) {
      stale.push(row.id);
      continue;
    }
    // Restored, not accepted again: an acknowledged event stays even if its publisher was
    // unregistered since (as on a running replica). Only a destroyed or re-created channel,
    // which took its local store with it, or a row that no longer fits it, is dropped.
    const at = { tag: row.tag, generation: row.gen };
    const outcome = machine.restoreUnorderedPublish({ body: row.body, sig: row.sig }, decoded.request, at, row.ts);
    if (outcome.stored === null) {
      if (row.gen <= machine.lastGeneration) stale.push(row.id);
      continue;
    }
    restored++;
    const trimmed = outcome.trimmed;
    if (trimmed !== null)
      storage.store.transaction(() => {
        // The rows refused so far go first: the trim deletes the store's oldest rows of the
        // channel, which must be the ones the machine trimmed, not refused ones still there.
        for (const id of stale.splice(0)) storage.store.deleteUnorderedRow(id);
        storage.store.deleteUnorderedOldest(row.tag, row.gen, trimmed.batchesRemoved);
        for (const floor of trimmed.floors) storage.store.raiseUnorderedFloor(row.tag, row.gen, floor.publisher, floor.through);
      });
  }
  if (stale.length > 0) storage.store.transaction(() => stale.forEach((id) => storage.store.deleteUnorderedRow(id)));
  return restored;
}

/**
 * The publishers' floors go back after the rows (a row at or below its publisher's floor,
 * stored before a late retry raised it, is put back rather than refused as stale): what
 * retention deleted stays refused, and each publisher's highest seq stays known. A floor
 * of a channel that is gone is deleted, under the same rule as the rows (restoreRows).
 */
function restoreFloors(options: Pick<RecoverOptions, "machine" | "storage">, rows: Iterable<Checked<UnorderedFloorRow>>): void {
  const { machine, storage } = options;
  const stale: number[] = [];
  for (const checked of rows) {
    if (!checked.ok) {
      storage.reportCorrupt([checked.corrupt]);
      stale.push(checked.corrupt.ids[0] ?? -1);
      continue;
    }
    const row = checked.row;
    if (machine.restoreUnorderedFloor({ tag: row.tag, generation: row.gen }, row.publisher, row.seq)) continue;
    if (row.gen <= machine.lastGeneration) stale.push(row.id);
  }
  if (stale.length > 0) storage.store.transaction(() => stale.forEach((id) => storage.store.deleteUnorderedFloorRow(id)));
}

// -------------------------------------------------------------------------------------
// 4. Core records
// -------------------------------------------------------------------------------------

interface CoreRecords {
  view: Rec<"view"> | null;
  stable: Rec<"stable"> | null;
  readonly checkpoints: Map<number, Rec<"checkpoint">>;
  readonly prepared: Rec<"prepared">[];
  readonly accepts: Rec<"accept">[];
}

/**
 * The core table, in write order. Stable and checkpoint records past the replayed log
 * are dropped and deleted: the core's h must never exceed its lastExecuted.
 */
function readCoreRecords(storage: ReplicaStorage, lastDecided: number, batches: BatchLookup): CoreRecords {
  const out: CoreRecords = { view: null, stable: null, checkpoints: new Map(), prepared: [], accepts: [] };
  const remove: number[] = [];
  const malformed: CorruptRow[] = [];
  for (const checked of storage.store.coreRows()) {
    if (!checked.ok) {
      malformed.push(checked.corrupt);
      remove.push(checked.corrupt.ids[0] ?? -1);
      continue;
    }
    const { id, kind } = checked.row;
    const read = readRecord(checked.row.rec, batches);
    if (!read.ok || read.record.t !== kind) {
      malformed.push({ table: "core", ids: [id], key: `id ${id} (${kind})`, reason: read.ok ? "malformed record" : read.reason });
      remove.push(id);
      continue;
    }
    const record = read.record;
    if (!keepCoreRecord(out, record, lastDecided)) remove.push(id);
  }
  if (malformed.length > 0) storage.reportCorrupt(malformed);
  if (remove.length > 0) storage.store.transaction(() => remove.forEach((id) => storage.store.deleteCoreRow(id)));
  return out;
}

/** Files one record; false when it is about a seq past the replayed log. */
function keepCoreRecord(out: CoreRecords, record: PersistedRecord, lastDecided: number): boolean {
  switch (record.t) {
    case "view":
      out.view = record;
      return true;
    case "accept":
      out.accepts.push(record);
      return true;
    case "prepared":
      out.prepared.push(record);
      return true;
    case "checkpoint":
      if (record.seq > lastDecided) return false;
      out.checkpoints.set(record.seq, record);
      return true;
    case "stable":
      if (record.seq > lastDecided) return false;
      if (out.stable === null || record.seq >= out.stable.seq) out.stable = record;
      return true;
    case "snapshot":
      // The base snapshot head is the authority for installed state (see pickCoreBase).
      return true;
    case "decided":
      return false;
    default: {
      const unreachable: never = record;
      return unreachable;
    }
  }
}

/**
 * The base the core restarts from: its own newest checkpoint at or below the stable one
 * (and after the machine's base), else the machine's base itself.
 */
function pickCoreBase(base: SnapshotHead | null, core: CoreRecords, lastDecided: number): Rec<"snapshot"> | null {
  const stable = core.stable;
  const baseSeq = base?.seq ?? 0;
  let best: Rec<"checkpoint"> | null = null;
  if (stable !== null) {
    for (const c of core.checkpoints.values()) {
      if (c.seq > baseSeq && c.seq <= stable.seq && c.seq <= lastDecided && (best === null || c.seq > best.seq)) best = c;
    }
  }
  if (best !== null) {
    const proof = stable !== null && best.seq === stable.seq ? stable.proof : [];
    return { t: "snapshot", seq: best.seq, stateDigest: best.stateDigest, appDigest: best.appDigest, clients: best.clients, proof };
  }
  if (base === null || base.appDigest === null || base.clients === null) return null;
  return {
    t: "snapshot",
    seq: base.seq,
    stateDigest: base.stateDigest,
    appDigest: base.appDigest,
    clients: base.clients,
    proof: base.proof,
  };
}

export type { ClientTableExport };
