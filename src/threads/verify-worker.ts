/**
 * A signature-verification thread (verify-pool.ts): takes a batch of (key, message,
 * signature) triples and answers one byte per item (1 verifies, 0 does not). Pure: no
 * state, no I/O; verification never throws on hostile input (crypto/ed25519.ts).
 */
import { verify } from "../crypto/ed25519.ts";
import { unpackBatch } from "./verify-batch.ts";
import type { VerifyBatch, VerifyResults } from "./verify-pool.ts";

declare const self: Worker;

self.onmessage = (message: MessageEvent<VerifyBatch>) => {
  const { id, packed } = message.data;
  const items = unpackBatch(packed);
  const results = new Uint8Array(items.length);
  items.forEach((item, i) => {
    results[i] = verify(item.key, item.message, item.sig) ? 1 : 0;
  });
  const answer: VerifyResults = { id, results };
  self.postMessage(answer, [results.buffer]);
};
