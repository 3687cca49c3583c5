/**
 * Subscriber-side voting on `$sys.events` (wire/PROTOCOL.md 2.1): every replica signs its
 * own report of what happens to the group (a view installed, a leader suspected, a peer
 * down or up), and a subscriber delivers a group event once f+1 distinct replicas reported
 * the same one, each event once. At least one of f+1 replicas is correct, so f liars can
 * neither make up an event nor change what it says.
 *
 * What "the same" means: a report is one JSON object, `kind` and its fields. The fields
 * `ts`, `replica` and `reason` are the reporting replica's own (its clock, its id, its
 * words) and are left out; every other field is agreed (`view-installed`: view and
 * leader; `peer-down`: peer). The event's key is its kind and agreed fields.
 *
 * Each key is delivered once. Peers go down and come up again, so `peer-down` and
 * `peer-up` of one peer are opposites: a replica's report of one withdraws its pending
 * report of the other (its latest word counts), and delivering one makes the other
 * deliverable again.
 *
 * The caller checks the signatures (the reports reach it through a crash/none
 * subscription whose publishers are the replicas' keys) and says which replica signed
 * each report. Bounded: pending reports per replica (a liar flooding made-up events
 * evicts only its own), and the delivered keys remembered.
 *
 * Pure: outputs are returned, nothing is sent or printed here.
 */
import { SYS_TAG_PREFIX } from "../../../wire/types.ts";
import { vouchQuorum } from "./quorum.ts";

export const SYS_EVENTS_TAG = `${SYS_TAG_PREFIX}events`;
/** A report's fields that are the reporting replica's own, never part of what is agreed. */
export const GROUP_REPORT_OWN_FIELDS: readonly string[] = ["ts", "replica", "reason"];
/** Fields the delivered event adds; a report may not carry them. */
export const GROUP_EVENT_ADDED_FIELDS: readonly string[] = ["reporters", "vouched"];
/** Kinds whose delivery makes the other deliverable again, for the same agreed fields. */
export const GROUP_EVENT_OPPOSITES: Readonly<Record<string, string>> = { "peer-down": "peer-up", "peer-up": "peer-down" };
/** Reports of events not delivered yet one replica may have pending; past it its oldest is dropped. */
export const GROUP_PENDING_PER_REPLICA_MAX = 64;
/** Delivered event keys remembered (late reports of them count, and do not deliver again). */
export const GROUP_DELIVERED_REMEMBERED_MAX = 1_024;
/** Bytes of an event's key (kind and agreed fields); a longer report is refused. */
export const GROUP_EVENT_KEY_BYTES_MAX = 1_024;

const KIND = /^[a-z][a-z0-9-]{0,63}$/;

type Scalar = string | number | boolean | null;

/** A group event, delivered once f+1 replicas reported it. */
export interface GroupEvent {
  /** Kind and agreed fields, the identity reports are matched by. */
  readonly key: string;
  readonly kind: string;
  readonly fields: Readonly<Record<string, Scalar>>;
  /** The replicas whose reports made it deliverable, ascending. */
  readonly reporters: readonly number[];
  /** One JSON object: `kind`, the agreed fields, `reporters` and `vouched` (their count). */
  readonly payload: Uint8Array;
}

export type GroupReportOutput =
  /** A valid report from `replica` of the event `key` was counted (for observers: how many replicas reported it). */
  | { readonly t: "report"; readonly replica: number; readonly key: string }
  | { readonly t: "deliver"; readonly event: GroupEvent }
  /** The report is not a group event report (not JSON, no kind, a field not allowed, ...); dropped. */
  | { readonly t: "invalid"; readonly replica: number; readonly reason: string };

export interface GroupEventVoterOptions {
  readonly n: number;
  readonly f: number;
}

type Parsed = { readonly kind: string; readonly fields: Record<string, Scalar> } | { readonly invalid: string };

export class GroupEventVoter {
  private n: number;
  private threshold: number;
  /** The replicas whose reports count; null: every id below n (no regroup yet). */
  private members: ReadonlySet<number> | null = null;
  /** Events not delivered yet, by key: the replicas that reported each. */
  private readonly pending = new Map<string, Set<number>>();
  /** Per replica: the keys of its pending reports, oldest first. */
  private readonly votes: Set<string>[];
  /** Delivered keys, oldest first, with every replica that reported them (late ones too). */
  private readonly delivered = new Map<string, Set<number>>();

  constructor(options: GroupEventVoterOptions) {
    if (!Number.isSafeInteger(options.f) || options.f < 0 || options.n < 3 * options.f + 1) {
      throw new RangeError(`group event voting needs n >= 3f+1 (n=${options.n}, f=${options.f})`);
    }
    this.n = options.n;
    this.threshold = vouchQuorum(options.f);
    this.votes = Array.from({ length: options.n }, () => new Set<string>());
  }

  /** Pending reports of events not delivered, all replicas together. */
  get pendingReports(): number {
    let count = 0;
    for (const own of this.votes) count += own.size;
    return count;
  }

  /** Takes one report signed by `replica` (its signature already checked) and returns what it caused. */
  onReport(replica: number, payload: Uint8Array): GroupReportOutput[] {
    if (!Number.isSafeInteger(replica) || replica < 0 || replica >= this.n || (this.members !== null && !this.members.has(replica))) {
      return [{ t: "invalid", replica, reason: `no replica ${replica}` }];
    }
    const parsed = parseReport(replica, payload);
    if ("invalid" in parsed) return [{ t: "invalid", replica, reason: parsed.invalid }];
    const key = eventKey(parsed.kind, parsed.fields);
    if (new TextEncoder().encode(key).length > GROUP_EVENT_KEY_BYTES_MAX) {
      return [{ t: "invalid", replica, reason: `the event is larger than ${GROUP_EVENT_KEY_BYTES_MAX} bytes` }];
    }
    const opposite = GROUP_EVENT_OPPOSITES[parsed.kind];
    if (opposite !== undefined) this.withdraw(replica, eventKey(opposite, parsed.fields));
    const report: GroupReportOutput = { t: "report", replica, key };
    const late = this.delivered.get(key);
    if (late !== undefined) {
      late.add(replica);
      return [report];
    }
    const reporters = this.vote(replica, key);
    if (reporters.size < this.threshold) return [report];
    return [report, { t: "deliver", event: this.deliver(key, parsed.kind, parsed.fields, reporters, opposite) }];
  }

  /**
   * The group changed: only reports of `members` count from now on, f+1 of the new `f`.
   * Pending reports of replicas that left (or whose key was replaced: `withdrawn`) are
   * taken back. Events whose remaining reports meet the new threshold (f was lowered) are
   * delivered here, oldest first, as DeliveryVoter.regroup does: the report that would
   * complete them may never come.
   */
  regroup(members: readonly number[], f: number, withdrawn: readonly number[] = []): GroupEvent[] {
    if (!Number.isSafeInteger(f) || f < 0 || members.length < 3 * f + 1) {
      throw new RangeError(`group event voting needs n >= 3f+1 (n=${members.length}, f=${f})`);
    }
    const top = Math.max(this.n, ...members.map((id) => id + 1));
    while (this.votes.length < top) this.votes.push(new Set<string>());
    this.n = top;
    const next = new Set(members);
    this.members = next;
    this.threshold = vouchQuorum(f);
    for (let replica = 0; replica < this.n; replica++) {
      if (next.has(replica) && !withdrawn.includes(replica)) continue;
      for (const key of [...(this.votes[replica] as Set<string>)]) this.withdraw(replica, key);
    }
    const due = [...this.pending].filter(([, reporters]) => reporters.size >= this.threshold);
    const events: GroupEvent[] = [];
    for (const [key, reporters] of due) {
      // An earlier delivery of this switch may have settled it (an opposite: only reports still pending count).
      if (this.pending.get(key) !== reporters || reporters.size < this.threshold) continue;
      const { kind, fields } = fromKey(key);
      events.push(this.deliver(key, kind, fields, reporters, GROUP_EVENT_OPPOSITES[kind]));
    }
    return events;
  }

  /** Counts the replica's report of `key`, within its allowance; the replicas that reported it so far. */
  private vote(replica: number, key: string): Set<number> {
    const own = this.votes[replica] as Set<string>;
    if (!own.has(key)) {
      while (own.size >= GROUP_PENDING_PER_REPLICA_MAX) this.withdraw(replica, own.values().next().value as string);
      own.add(key);
    }
    let reporters = this.pending.get(key);
    if (reporters === undefined) {
      reporters = new Set();
      this.pending.set(key, reporters);
    }
    reporters.add(replica);
    return reporters;
  }

  /** Takes back the replica's pending report of `key`, if it has one. */
  private withdraw(replica: number, key: string): void {
    if (!(this.votes[replica] as Set<string>).delete(key)) return;
    const reporters = this.pending.get(key);
    reporters?.delete(replica);
    if (reporters !== undefined && reporters.size === 0) this.pending.delete(key);
  }

  private deliver(key: string, kind: string, fields: Record<string, Scalar>, reporters: Set<number>, opposite?: string): GroupEvent {
    this.pending.delete(key);
    for (const replica of reporters) (this.votes[replica] as Set<string>).delete(key);
    this.delivered.set(key, reporters);
    if (this.delivered.size > GROUP_DELIVERED_REMEMBERED_MAX) this.delivered.delete(this.delivered.keys().next().value as string);
    // The opposite of what was just agreed (a peer down, then up) may happen again.
    if (opposite !== undefined) this.delivered.delete(eventKey(opposite, fields));
    const ids = [...reporters].sort((a, b) => a - b);
    const payload = new TextEncoder().encode(JSON.stringify({ kind, ...fields, reporters: ids, vouched: ids.length }));
    return { key, kind, fields, reporters: ids, payload };
  }
}

/** The identity of an event: its kind and agreed fields, in a fixed order. */
function eventKey(kind: string, fields: Record<string, Scalar>): string {
  return JSON.stringify([
    kind,
    Object.keys(fields)
      .sort()
      .map((name) => [name, fields[name] as Scalar]),
  ]);
}

/** The kind and agreed fields an event key was made of (eventKey, inverted). */
function fromKey(key: string): { kind: string; fields: Record<string, Scalar> } {
  const [kind, pairs] = JSON.parse(key) as [string, [string, Scalar][]];
  return { kind, fields: Object.fromEntries(pairs) };
}

function parseReport(replica: number, payload: Uint8Array): Parsed {
  let report: unknown;
  try {
    report = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(payload));
  } catch {
    return { invalid: "not a JSON report" };
  }
  if (typeof report !== "object" || report === null || Array.isArray(report)) return { invalid: "not a JSON object" };
  const { kind, replica: claimed, ...rest } = report as Record<string, unknown>;
  if (typeof kind !== "string" || !KIND.test(kind)) return { invalid: "no kind" };
  if (claimed !== replica) return { invalid: `signed by replica ${replica} but says it is replica ${String(claimed)}` };
  const fields: Record<string, Scalar> = {};
  for (const [name, value] of Object.entries(rest)) {
    if (GROUP_REPORT_OWN_FIELDS.includes(name)) continue;
    if (GROUP_EVENT_ADDED_FIELDS.includes(name)) return { invalid: `a report may not carry ${name}` };
    if (value !== null && typeof value !== "string" && typeof value !== "number" && typeof value !== "boolean") {
      return { invalid: `field ${name} is not a string, number, boolean or null` };
    }
    fields[name] = value;
  }
  return { kind, fields };
}
