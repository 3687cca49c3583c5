/**
 * A signature-verification thread (verify-pool.ts): takes a batch of (key, message,
 * signature) triples and answers one byte per item (1 verifies, 0 does not). Pure: no
 * state, no I/O; verification never throws on hostile input (crypto/ed25519.ts).
 */
import { verify } from "../crypto/ed25519.ts";
import type { VerifyBatch, VerifyResults } from "./verify-pool.ts";

declare const self: Worker;

self.onmessage = (message: MessageEvent<VerifyBatch>) => {
  const { id, keys, messages, sigs } = message.data;
  const results = new Uint8Array(keys.length);
  for (let i = 0; i < keys.length; i++) {
    results[i] = verify(keys[i] as Uint8Array, messages[i] as Uint8Array, sigs[i] as Uint8Array) ? 1 : 0;
  }
  const answer: VerifyResults = { id, results };
  self.postMessage(answer, [results.buffer]);
};
