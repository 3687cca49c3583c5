/**
 * `fitb sub --config C --key K TAG [--from SEQ] [--count N] [--json]`: prints the events
 * of channel TAG as they are delivered (after voting and end-to-end signature checks),
 * one a line, until interrupted or, with --count, after N events.
 *
 * Plain lines are `TAG SEQ PAYLOAD`, PAYLOAD as text when it is valid UTF-8 without line
 * breaks and does not itself begin with `base64:`, else `base64:` and its base64 (so the
 * prefix always means base64). --json lines are
 * {"tag","seq","publisher","ts","payload"} with `payload_b64` instead of `payload` when
 * the payload is not valid UTF-8.
 */
import { formatPublicKey } from "../../crypto/keys.ts";
import { eventSeq, type ReceivedBatch, type Subscription, type SubscriptionSignal } from "../../client/subscription.ts";
import type { ParsedArgs } from "../args.ts";
import type { Command, CommandIo } from "../command.ts";
import { EXIT_OK } from "../errors.ts";
import { CONFIG_FLAG, keyFlag, openClient, readClientFlags, requireTag, TIMEOUT_FLAGS, withClientErrors } from "./pub.ts";

/** --count and --from accept at most this (a safe integer). */
const SEQ_ARG_MAX = Number.MAX_SAFE_INTEGER;

export const subCommand: Command = {
  path: ["sub"],
  summary: "Print the events of a channel as they are delivered",
  description: [
    "Subscribes to channel TAG at every replica and prints each event once it is",
    "delivered: on byzantine/total channels when f+1 replicas sent the same batch at the",
    "same sequence number, on other channels from the first copy whose publisher",
    "signature verifies. Every publisher signature is checked here, end to end.",
    "Total-order channels print in channel order with no gap and no duplicate, across",
    "replica failures. Lines: 'TAG SEQ PAYLOAD' (PAYLOAD as text, or 'base64:...' when it",
    "is not UTF-8 text on one line or itself begins with 'base64:'), or with --json one",
    "object per line:",
    '{"tag","seq","publisher","ts","payload"} ("payload_b64" when not UTF-8).',
  ],
  flags: [
    CONFIG_FLAG,
    keyFlag("This subscriber's secret key file"),
    {
      name: "from",
      kind: "string",
      valueName: "SEQ",
      description: "Start at channel seq SEQ (total order); 0 = all retained events (unordered). Default: live",
    },
    { name: "count", kind: "string", valueName: "N", description: "Exit after N events" },
    { name: "json", kind: "boolean", description: "Print one JSON object per event" },
    ...TIMEOUT_FLAGS,
  ],
  positionals: [{ name: "TAG", description: "The channel, e.g. net.links", required: true }],
  examples: [
    "fitb sub --config cluster.toml --key console.key net.links",
    "fitb sub --config cluster.toml --key console.key sec.alerts --from 1 --count 100 --json",
  ],
  run: runSub,
};

async function runSub(args: ParsedArgs, io: CommandIo): Promise<number> {
  const flags = readClientFlags(args);
  const tag = requireTag(args.requiredPositional("TAG"));
  const from = args.integer("from", 0, SEQ_ARG_MAX);
  const count = args.integer("count", 1, SEQ_ARG_MAX);
  const json = args.boolean("json");
  const client = await openClient(flags, io, "sub");
  try {
    let printed = 0;
    let subscription: Subscription | null = null;
    const format = json ? jsonLine : plainLine;
    const reached = (): boolean => count !== undefined && printed >= count;
    const onSignal = (signal: SubscriptionSignal): void => reportSignal(io, signal);
    const onBatch = (batch: ReceivedBatch): void => {
      for (let index = 0; index < batch.events.length && !reached(); index++) {
        io.out(format(batch, index));
        printed++;
      }
      // Deliveries may begin before subscribe() returns; then the close happens just after.
      if (reached()) void subscription?.close();
    };
    const started = await withClientErrors(() => client.subscribe(tag, from === undefined ? { onSignal } : { from, onSignal }, onBatch));
    subscription = started;
    if (reached()) await started.close();
    await withClientErrors(() => started.done);
    return EXIT_OK;
  } finally {
    client.close();
  }
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** The payload as text, or null when it is not valid UTF-8. */
export function payloadText(payload: Uint8Array): string | null {
  try {
    return strictUtf8.decode(payload);
  } catch {
    return null;
  }
}

/** Marks a payload printed as base64; a text payload that begins with it is printed as base64 too. */
const BASE64_PREFIX = "base64:";

/** `TAG SEQ PAYLOAD`. */
export function plainLine(batch: ReceivedBatch, index: number): string {
  const payload = batch.events[index] as Uint8Array;
  const text = payloadText(payload);
  const plain = text !== null && !/[\r\n]/.test(text) && !text.startsWith(BASE64_PREFIX);
  const shown = plain ? text : `${BASE64_PREFIX}${Buffer.from(payload).toString("base64")}`;
  return `${batch.tag} ${eventSeq(batch, index)} ${shown}`;
}

/** {"tag","seq","publisher","ts","payload"} or with "payload_b64". */
export function jsonLine(batch: ReceivedBatch, index: number): string {
  const payload = batch.events[index] as Uint8Array;
  const text = payloadText(payload);
  const base = { tag: batch.tag, seq: eventSeq(batch, index), publisher: formatPublicKey(batch.publisher), ts: batch.ts };
  return JSON.stringify(text !== null ? { ...base, payload: text } : { ...base, payload_b64: Buffer.from(payload).toString("base64") });
}

/** Signals go to standard error, so the event stream on standard output stays clean. */
function reportSignal(io: CommandIo, signal: SubscriptionSignal): void {
  switch (signal.t) {
    case "slow":
      io.err(
        signal.source === "local"
          ? `fitb sub: warning: output fell behind; pausing and resuming at seq ${signal.resumeFrom} (nothing is lost)`
          : `fitb sub: warning: replica ${signal.replica} dropped us for being slow; resubscribed`,
      );
      return;
    case "overflow":
      io.err(
        signal.source === "local"
          ? `fitb sub: warning: output fell behind; ${signal.droppedEvents} events dropped`
          : `fitb sub: warning: ${signal.droppedEvents} events dropped: ${signal.reason}`,
      );
      return;
    case "invalid":
      io.err(`fitb sub: warning: replica ${signal.replica} sent an invalid copy (${signal.reason}); dropped`);
      return;
    case "conflict":
      io.err(`fitb sub: warning: replica ${signal.replica} contradicts the others at seq ${signal.seq}: ${signal.reason}`);
      return;
    case "trimmed":
      io.err(`fitb sub: warning: seq ${signal.nextSeq} is no longer retained; the oldest is ${signal.oldestSeq}`);
      return;
    case "replica-ended":
      io.err(`fitb sub: warning: replica ${signal.replica} ended the subscription: ${signal.code} ${signal.reason}`);
      return;
    default: {
      const unreachable: never = signal;
      throw new Error(`unknown signal ${String(unreachable)}`);
    }
  }
}
