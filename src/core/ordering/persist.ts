/**
 * Compaction of the persisted records. The core only appends; after a stable checkpoint
 * most of what it wrote is no longer needed to restart. `compactRecords` keeps exactly
 * what `new OrderingCore(cfg, crypto, records)` needs to come back in the same state
 * (core/ordering/PROTOCOL.md §7: the log before a stable checkpoint is truncated).
 *
 * The runtime must keep the application snapshot at the returned base's `seq` (it stored
 * one at `takeCheckpoint`, or installed one after `fetchState`): on restart it loads that
 * snapshot and replays the `decided` records after it.
 */
import type { PersistedRecord } from "./types.ts";

type Rec<T extends PersistedRecord["t"]> = Extract<PersistedRecord, { t: T }>;

/** Returns an equivalent, shorter record list. Pure; the input is not modified. */
export function compactRecords(records: readonly PersistedRecord[]): PersistedRecord[] {
  let lastView: Rec<"view"> | null = null;
  let stable: Rec<"stable"> | null = null;
  for (const r of records) {
    if (r.t === "view") lastView = r;
    else if (r.t === "stable" && (stable === null || r.seq > stable.seq)) stable = r;
  }
  const stableSeq = stable?.seq ?? 0;
  const base = pickBase(records, stable);
  const baseSeq = base?.seq ?? 0;
  const installedView = lastView?.installedView ?? 0;

  const decided = new Map<number, Rec<"decided">>();
  const checkpoints = new Map<number, Rec<"checkpoint">>();
  const prepared = new Map<number, Rec<"prepared">>();
  const accepts = new Map<string, Rec<"accept">>();
  for (const r of records) {
    switch (r.t) {
      case "decided":
        if (r.seq > baseSeq && !decided.has(r.seq)) decided.set(r.seq, r);
        break;
      case "checkpoint":
        if (r.seq > baseSeq) checkpoints.set(r.seq, r);
        break;
      case "prepared": {
        const prev = prepared.get(r.cert.seq);
        if (r.cert.seq > stableSeq && (prev === undefined || prev.cert.view <= r.cert.view)) prepared.set(r.cert.seq, r);
        break;
      }
      case "accept": {
        const pp = r.prePrepare;
        const key = `${pp.view}:${pp.seq}`;
        if (pp.seq > stableSeq && pp.view >= installedView && !accepts.has(key)) accepts.set(key, r);
        break;
      }
      default:
        break;
    }
  }
  const out: PersistedRecord[] = [];
  if (base !== null) out.push(base);
  if (stable !== null) out.push(stable);
  out.push(...[...decided.values()].sort((a, b) => a.seq - b.seq));
  out.push(...[...checkpoints.values()].sort((a, b) => a.seq - b.seq));
  out.push(...[...prepared.values()].sort((a, b) => a.cert.seq - b.cert.seq));
  if (lastView !== null) out.push(lastView);
  out.push(...accepts.values());
  return out;
}

/**
 * The newest state the replica can restart from without replaying decisions: an
 * installed snapshot, or its own checkpoint at or below the stable one (written as a
 * snapshot record so that restore treats both alike).
 */
function pickBase(records: readonly PersistedRecord[], stable: Rec<"stable"> | null): Rec<"snapshot"> | null {
  let base: Rec<"snapshot"> | null = null;
  for (const r of records) {
    if (r.t === "snapshot") {
      if (base === null || r.seq >= base.seq) base = r;
    } else if (r.t === "checkpoint" && stable !== null && r.seq <= stable.seq) {
      if (base === null || r.seq > base.seq) {
        const proof = r.seq === stable.seq ? stable.proof : [];
        base = { t: "snapshot", seq: r.seq, stateDigest: r.stateDigest, appDigest: r.appDigest, clients: r.clients, proof };
      }
    }
  }
  return base;
}
