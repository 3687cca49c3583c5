/**
 * A worker thread of the simulator CLI: runs its share of the seeds and posts each
 * result back (without the trace).
 */
import { type BatchSpec, runBatch } from "./batch.ts";

declare const self: Worker;

self.onmessage = (event: MessageEvent<BatchSpec>) => {
  runBatch(event.data, undefined, (r) => self.postMessage({ ...r, trace: [] }));
  self.postMessage(null);
};
