/**
 * ed25519 sign and verify rates: the native path fitb uses (node:crypto in Bun,
 * BoringSSL underneath) against @noble/ed25519 (pure JavaScript), plus the frame
 * MAC used on replica sessions. Prints figures; never fails on a threshold.
 *
 *   bun test/bench/crypto.ts
 */
import * as noble from "@noble/ed25519";
import { sha512 } from "@noble/hashes/sha2.js";
import { sign, verify } from "../../src/crypto/ed25519.ts";
import { SigningKey } from "../../src/crypto/keys.ts";
import { macFrame } from "../../src/crypto/session.ts";
import { FrameType } from "../../wire/types.ts";

noble.hashes.sha512 = sha512;

/** Each measurement runs at least this long, so a figure is not one timer tick. */
const MEASURE_MS_MIN = 1000;
/** Operations between clock reads, so reading the clock does not show up in the figure. */
const OPS_PER_CHECK = 50;
const MESSAGE_SIZES_BYTES = [128, 4096];

interface Rate {
  opsPerSecond: number;
  ops: number;
}

function measure(operation: () => void): Rate {
  for (let i = 0; i < OPS_PER_CHECK; i += 1) operation(); // warm-up
  let ops = 0;
  const started = performance.now();
  let elapsedMs = 0;
  while (elapsedMs < MEASURE_MS_MIN) {
    for (let i = 0; i < OPS_PER_CHECK; i += 1) operation();
    ops += OPS_PER_CHECK;
    elapsedMs = performance.now() - started;
  }
  return { opsPerSecond: (ops * 1000) / elapsedMs, ops };
}

function report(label: string, rate: Rate): void {
  console.log(`${label.padEnd(34)} ${Math.round(rate.opsPerSecond).toLocaleString("en-US").padStart(10)} /s  (${rate.ops} ops)`);
}

function benchSize(messageBytes: number): void {
  const key = SigningKey.generate();
  const seed = key.exportSeed();
  const message = crypto.getRandomValues(new Uint8Array(messageBytes));
  const signature = sign(key, message);
  const macKey = crypto.getRandomValues(new Uint8Array(32));
  let sink = 0;

  console.log(`\n${messageBytes}-byte messages`);
  report(
    "ed25519 sign    native",
    measure(() => (sink ^= sign(key, message)[0]!)),
  );
  report(
    "ed25519 verify  native",
    measure(() => (sink ^= verify(key.publicKey, message, signature) ? 1 : 0)),
  );
  report(
    "ed25519 sign    @noble/ed25519",
    measure(() => (sink ^= noble.sign(message, seed)[0]!)),
  );
  report(
    "ed25519 verify  @noble/ed25519",
    measure(() => (sink ^= noble.verify(signature, message, key.publicKey) ? 1 : 0)),
  );
  report(
    "HMAC-SHA-256 frame MAC  native",
    measure(() => (sink ^= macFrame(macKey, FrameType.PEER, 1, message)[0]!)),
  );
  // Using the result keeps the work from being optimized away.
  if (sink === -1) console.log("unreachable");
}

console.log(`fitb crypto benchmark: bun ${Bun.version}, ${navigator.hardwareConcurrency} cores, single thread`);
for (const size of MESSAGE_SIZES_BYTES) benchSize(size);
