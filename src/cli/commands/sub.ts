/**
 * `fitb sub --config C --key K TAG [--from SEQ] [--count N] [--json]`: prints the events
 * of channel TAG as they are delivered (after voting and end-to-end signature checks),
 * one a line, until interrupted or, with --count, after N events.
 *
 * Plain lines are `TAG SEQ PAYLOAD`, PAYLOAD as text when it is valid UTF-8 without a
 * control character other than TAB (the relay's EVENT line test, isLineSafe: no line
 * break, no C1 control, line separator or bidi control that could end the line, forge
 * another or drive the terminal) and does not itself begin with `base64:`, else `base64:`
 * and its base64 (so the prefix always means base64). --json lines are
 * {"tag","seq","publisher","ts","payload"} with `payload_b64` instead of `payload` when
 * the payload is not valid UTF-8; the characters JSON leaves as they are but that end or
 * reorder a line for some readers are written as \u escapes. --format TEMPLATE prints plain lines of the caller's
 * shape: {tag} {seq} {payload} as above, {time} (ISO 8601, UTC, of the publish's signed
 * time), {ts} (the same in ms), {publisher} (ed25519:...).
 */
import { plural } from "../words.ts";
import { formatPublicKey } from "../../crypto/keys.ts";
import { isLineSafe } from "../../relay/format.ts";
import { isPattern, patternProblem } from "../../client/pattern.ts";
import {
  eventSeq,
  type ReceivedBatch,
  type SubscribeOptions,
  type SubscriptionHandle,
  type SubscriptionSignal,
} from "../../client/subscription.ts";
import type { ParsedArgs } from "../args.ts";
import type { Command, CommandIo } from "../command.ts";
import { EXIT_OK, UsageError } from "../errors.ts";
import {
  CONFIG_FLAG,
  keyFlag,
  keyNoteOf,
  openClient,
  readClientFlags,
  readSources,
  requireTag,
  SOURCES_FLAG,
  TIMEOUT_FLAGS,
  withClientErrors,
} from "./pub.ts";

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
    "is not UTF-8 text free of control characters but TAB, or itself begins with 'base64:'),",
    "or with --json one object per line:",
    '{"tag","seq","publisher","ts","payload"} ("payload_b64" when not UTF-8).',
    "--format TEMPLATE shapes plain lines: {tag} {seq} {payload} as above, {time} (ISO 8601",
    "UTC of the publisher's signed time), {ts} (the same in ms since the epoch), {publisher}.",
    "Default '{tag} {seq} {payload}'. A reader that closes the output (| head) ends it quietly.",
    "TAG may be a pattern: 'net.*' matches one segment (net.links), 'net.>' one or more",
    "(net.links, net.links.eth0). Each matching channel is delivered with its own",
    "guarantees; channels created later that match are followed from their first event.",
    "A pattern subscription is live (no --from).",
    "On low and normal total-order channels, once started, f+1 replicas serve the",
    "subscription and the others stand by, until a fault shows (a copy waiting half a",
    "second for its vote, a contradiction, a dropped session, a refusal): then every",
    "replica is read again from the next seq, with a line on standard error naming the",
    "suspects. --sources all reads every replica all along; quorum narrows high and",
    "critical channels too (by default they are read from every replica, for latency).",
  ],
  flags: [
    CONFIG_FLAG,
    keyFlag("This subscriber's secret key file"),
    {
      name: "from",
      kind: "string",
      valueName: "SEQ",
      description:
        "Start at channel seq SEQ (total order); unordered channels take only 0, every retained event (each replica numbers its own store). Default: live",
    },
    { name: "count", kind: "string", valueName: "N", description: "Exit after N events" },
    { name: "json", kind: "boolean", description: "Print one JSON object per event" },
    SOURCES_FLAG,
    {
      name: "format",
      kind: "string",
      valueName: "TEMPLATE",
      description: "Plain line template: {tag} {seq} {time} {ts} {publisher} {payload}",
    },
    ...TIMEOUT_FLAGS,
  ],
  positionals: [
    { name: "TAG", description: "The channel, e.g. net.links, or a pattern: net.* (one segment), net.> (one or more)", required: true },
  ],
  examples: [
    "fitb sub --config cluster.toml --key console.key net.links",
    "fitb sub --config cluster.toml --key console.key sec.alerts --from 1 --count 100 --json",
    "fitb sub --config cluster.toml --key console.key sec.alerts --format '{time} {publisher} {payload}'",
    "fitb sub --config cluster.toml --key console.key 'net.>'",
  ],
  run: runSub,
};

async function runSub(args: ParsedArgs, io: CommandIo): Promise<number> {
  const flags = readClientFlags(args);
  const tagText = args.requiredPositional("TAG");
  const pattern = isPattern(tagText);
  const tag = pattern ? requirePattern(tagText) : requireTag(tagText);
  const from = args.integer("from", 0, SEQ_ARG_MAX);
  if (pattern && from !== undefined) throw new UsageError("--from names a seq of one channel; a pattern subscription is live");
  const count = args.integer("count", 1, SEQ_ARG_MAX);
  const json = args.boolean("json");
  const template = args.string("format");
  const sources = readSources(args);
  if (json && template !== undefined) throw new UsageError("--format shapes plain lines; it does not apply with --json");
  const format = json ? jsonLine : template === undefined ? plainLine : templateLine(parseTemplate(template));
  const client = await openClient(flags, io, "sub");
  const keyNote = keyNoteOf(client, flags.keyPath);
  try {
    let printed = 0;
    let subscription: SubscriptionHandle | null = null;
    const reached = (): boolean => count !== undefined && printed >= count;
    const onSignal = (signal: SubscriptionSignal): void => reportSignal(io, signal);
    const options: SubscribeOptions = { onSignal, sources };
    const onBatch = (batch: ReceivedBatch): void => {
      for (let index = 0; index < batch.events.length && !reached(); index++) {
        io.out(format(batch, index));
        printed++;
      }
      // Deliveries may begin before subscribe() returns; then the close happens just after.
      if (reached()) void subscription?.close();
    };
    const started = await withClientErrors(
      () => client.subscribeAny(tag, from === undefined ? options : { ...options, from }, onBatch),
      keyNote,
    );
    subscription = started;
    if (reached()) await started.close();
    await withClientErrors(() => started.done, keyNote);
    return EXIT_OK;
  } finally {
    client.close();
  }
}

/** A TAG argument that is a pattern: a UsageError naming what is wrong with it. */
function requirePattern(text: string): string {
  const problem = patternProblem(text);
  if (problem !== null) throw new UsageError(`TAG: ${problem}`);
  return text;
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
  return `${batch.tag} ${eventSeq(batch, index)} ${shownPayload(batch.events[index] as Uint8Array)}`;
}

/**
 * The payload as text when that is safe on one line, else `base64:...`. Safe is what the
 * relay sends as an EVENT line: UTF-8 with no control character but TAB, so that a payload
 * cannot end the line (CR, LF, NEL, U+2028), print what looks like another line, or drive
 * the reader's terminal.
 */
function shownPayload(payload: Uint8Array): string {
  const text = isLineSafe(payload) ? payloadText(payload) : null;
  const plain = text !== null && !text.startsWith(BASE64_PREFIX);
  return plain ? text : `${BASE64_PREFIX}${Buffer.from(payload).toString("base64")}`;
}

const TEMPLATE_FIELDS = ["tag", "seq", "time", "ts", "publisher", "payload"] as const;
type TemplateField = (typeof TEMPLATE_FIELDS)[number];
/** A --format template cut into literal text and fields. */
export type Template = readonly (string | { readonly field: TemplateField })[];

/** Parses `{seq} {time} ...`; an unknown {name} is a usage error (a typo would print nothing useful). */
export function parseTemplate(text: string): Template {
  const parts: (string | { field: TemplateField })[] = [];
  let rest = text;
  for (let match = /\{([a-z]+)\}/.exec(rest); match !== null; match = /\{([a-z]+)\}/.exec(rest)) {
    const field = TEMPLATE_FIELDS.find((name) => name === match?.[1]);
    if (field === undefined)
      throw new UsageError(`--format: unknown field {${match[1]}}; known: ${TEMPLATE_FIELDS.map((n) => `{${n}}`).join(" ")}`);
    if (match.index > 0) parts.push(rest.slice(0, match.index));
    parts.push({ field });
    rest = rest.slice(match.index + match[0].length);
  }
  if (rest.length > 0) parts.push(rest);
  return parts;
}

/** A line printer for a parsed template. */
export function templateLine(template: Template): (batch: ReceivedBatch, index: number) => string {
  return (batch, index) =>
    template
      .map((part) => {
        if (typeof part === "string") return part;
        switch (part.field) {
          case "tag":
            return batch.tag;
          case "seq":
            return String(eventSeq(batch, index));
          case "time":
            return new Date(batch.ts).toISOString();
          case "ts":
            return String(batch.ts);
          case "publisher":
            return formatPublicKey(batch.publisher);
          case "payload":
            return shownPayload(batch.events[index] as Uint8Array);
          default: {
            const unreachable: never = part.field;
            return String(unreachable);
          }
        }
      })
      .join("");
}

/** DEL, C1 controls, U+2028/U+2029 (line ends to Python's splitlines and to JavaScript) and bidi controls. */
const JSON_UNESCAPED_CONTROLS = /[\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/g;

/** {"tag","seq","publisher","ts","payload"} or with "payload_b64". */
export function jsonLine(batch: ReceivedBatch, index: number): string {
  const payload = batch.events[index] as Uint8Array;
  const text = payloadText(payload);
  const base = { tag: batch.tag, seq: eventSeq(batch, index), publisher: formatPublicKey(batch.publisher), ts: batch.ts };
  const json = JSON.stringify(
    text !== null ? { ...base, payload: text } : { ...base, payload_b64: Buffer.from(payload).toString("base64") },
  );
  // JSON escapes C0 controls but not these; they occur only inside strings, where an escape means the same.
  return json.replace(JSON_UNESCAPED_CONTROLS, (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** Signals go to standard error, so the event stream on standard output stays clean. */
export function reportSignal(io: Pick<CommandIo, "err">, signal: SubscriptionSignal): void {
  switch (signal.t) {
    case "slow":
      io.err(
        signal.source === "local"
          ? `fitb sub: warning: output fell behind; pausing and resuming at seq ${signal.resumeFrom} (nothing is lost)`
          : `fitb sub: warning: replica ${signal.replica} ended the subscription SLOW (${signal.reason}); resubscribed, nothing lost`,
      );
      return;
    case "overflow":
      io.err(
        signal.source === "local"
          ? `fitb sub: warning: output fell behind; ${plural(signal.droppedEvents, "event")} dropped`
          : `fitb sub: warning: ${plural(signal.droppedEvents, "event")} dropped: ${signal.reason}`,
      );
      return;
    case "invalid":
      // One line per signal: the subscription sends at most one per replica every
      // SIGNAL_INTERVAL_MS, with the copies it stands for.
      io.err(
        signal.copies === undefined
          ? `fitb sub: warning: ${signal.replica === null ? "a copy" : `replica ${signal.replica} sent a copy that`} failed its checks (${signal.reason}); dropped`
          : `fitb sub: warning: replica ${signal.replica} sent ${signal.copies} copies that failed their checks (last: ${signal.reason}); dropped`,
      );
      return;
    case "conflict":
      io.err(`fitb sub: warning: replica ${signal.replica} at seq ${signal.seq}: ${signal.reason}`);
      return;
    case "trimmed":
      io.err(`fitb sub: warning: seq ${signal.nextSeq} is no longer retained; the oldest is ${signal.oldestSeq}`);
      return;
    case "channel":
      io.err(describeChannelSignal(signal));
      return;
    case "replica-ended":
      io.err(`fitb sub: warning: replica ${signal.replica} ended the subscription: ${signal.code} ${signal.reason}`);
      return;
    case "widened":
      io.err(
        signal.suspects.length === 0
          ? `fitb sub: reading every replica again: ${signal.reason}`
          : `fitb sub: warning: reading every replica again: ${signal.reason} (suspected: replica ${signal.suspects.join(", ")})`,
      );
      return;
    default: {
      const unreachable: never = signal;
      throw new Error(`unknown signal ${String(unreachable)}`);
    }
  }
}

function describeChannelSignal(signal: Extract<SubscriptionSignal, { t: "channel" }>): string {
  switch (signal.event) {
    case "added":
      return `fitb sub: following ${signal.tag}${signal.reason === "created" ? " (created since; from its first retained event)" : ""}`;
    case "skipped":
      return `fitb sub: warning: not following ${signal.tag}: ${signal.reason}`;
    case "refused":
      return `fitb sub: warning: ${signal.tag} refused the subscription: ${signal.reason}`;
    case "ended":
      return `fitb sub: warning: no longer following ${signal.tag}: ${signal.reason}`;
    case "list-failed":
      return `fitb sub: warning: could not look for new channels matching ${signal.tag}: ${signal.reason}`;
    default: {
      const unreachable: never = signal.event;
      return String(unreachable);
    }
  }
}
