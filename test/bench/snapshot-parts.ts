/**
 * Snapshot parts benchmark (run on purpose: `bun test/bench/snapshot-parts.ts [MIB]`, not
 * part of `npm test`). A channel machine holds MIB (default 64, one channel's default
 * retention) of retained batches: requests of 256 events of 200 bytes, as `fitb bench`
 * publishes them. The state is cut into the 256 KiB parts a base snapshot and a state
 * transfer are made of (src/replica/storage/stream.ts `PartCutter`), five times; the
 * figures are the main-thread time per cut and per MiB. Figures are printed, never judged.
 */
import { sha256 } from "../../src/crypto/hash.ts";
import { DEFAULT_CHANNELS_CONFIG } from "../../src/core/channels/config.ts";
import { ChannelMachine } from "../../src/core/channels/machine.ts";
import { encodeStreamMeta, PartCutter, STREAM_PART_BYTES_MAX } from "../../src/replica/storage/stream.ts";
import { execute, TestClient } from "../unit/storage-fixtures.ts";

const MIB = Number(process.argv[2] ?? 64);
const EVENTS_PER_REQUEST = 256;
const EVENT_BYTES = 200;
const ROUNDS = 5;

if (!Number.isFinite(MIB) || MIB <= 0 || MIB > 1024) {
  console.error("usage: bun test/bench/snapshot-parts.ts [MIB]   (retained state to cut, 1..1024, default 64)");
  process.exit(2);
}

const machine = new ChannelMachine({
  hash: sha256,
  config: { ...DEFAULT_CHANNELS_CONFIG, retention: { ...DEFAULT_CHANNELS_CONFIG.retention, bytes: MIB * 1024 * 1024 } },
});
const admin = new TestClient();
const publisher = new TestClient();
execute(machine, [
  admin.admin({ t: "create-channel", tag: "bench.parts", fault: "byzantine", order: "total", priority: "normal", public: true }),
  admin.admin({ t: "register", tag: "bench.parts", role: "publisher", key: publisher.key.publicKey }),
]);
const requests = Math.ceil((MIB * 1024 * 1024) / (EVENTS_PER_REQUEST * EVENT_BYTES));
const events = Array.from({ length: EVENTS_PER_REQUEST }, (_, i) => `e${i}`.padEnd(EVENT_BYTES, "."));
for (let r = 0; r < requests; r++) {
  execute(machine, [publisher.pub("bench.parts", events)]);
  if (r % 200 === 0) process.stderr.write(`\r  building the state: ${r}/${requests} requests`);
}
process.stderr.write("\n");

const meta = encodeStreamMeta({ seq: 1, clients: [] });
for (let round = 1; round <= ROUNDS; round++) {
  const started = performance.now();
  const cutter = new PartCutter(meta, machine.exportSnapshot(), STREAM_PART_BYTES_MAX);
  let bytes = 0;
  for (let part = cutter.next(); part !== null; part = cutter.next()) bytes += part.length;
  const ms = performance.now() - started;
  const mib = bytes / 1024 / 1024;
  console.log(
    `round ${round}: ${cutter.partsProduced} parts, ${mib.toFixed(1)} MiB in ${ms.toFixed(1)} ms (${(ms / mib).toFixed(2)} ms per MiB)`,
  );
}
