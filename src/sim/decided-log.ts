/**
 * The runtime's answer to the core's `serveDecided` (src/replica/ordering-driver.ts
 * serveDecided, which reads the decided log on disk), from a simulated replica's kept
 * records instead: the decisions from `seq` on, in order, up to `toSeq`, ending before
 * the first one not kept and before the bytes pass `bytesMax` (the first always goes).
 */
import { type DecidedItem, decidedItemBytes, type Effect, type PersistedRecord, type StateResponse } from "../core/ordering/index.ts";

export function answerFromRecords(records: readonly PersistedRecord[], o: Extract<Effect, { kind: "serveDecided" }>): StateResponse {
  const kept = new Map<number, Extract<PersistedRecord, { t: "decided" }>>();
  for (const r of records) if (r.t === "decided" && r.seq >= o.seq && r.seq <= o.toSeq && !kept.has(r.seq)) kept.set(r.seq, r);
  const items: DecidedItem[] = [];
  let bytes = 0;
  for (let seq = o.seq; seq <= o.toSeq; seq++) {
    const r = kept.get(seq);
    if (r === undefined) break;
    const item: DecidedItem = { view: r.view, seq, batch: r.batch, commits: r.commits, votes: [] };
    const size = decidedItemBytes(item);
    if (items.length > 0 && bytes + size > o.bytesMax) break;
    items.push(item);
    bytes += size;
  }
  return { t: "STATE_RESPONSE", kind: "decided", nonce: o.nonce, items, stable: o.stable, lastExecuted: o.lastExecuted };
}
