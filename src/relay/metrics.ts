/**
 * The relay's metrics (`fitb relay --metrics HOST:PORT`): connections, publishes and
 * their acks, subscriptions and deliveries, per tag, and the session to each replica of
 * the group the relay's client follows (replica_up: a removed replica's series goes, an
 * added one's comes).
 * Per-tag series are bounded like the replica's: the first RELAY_METRICS_TAGS_MAX tags
 * have their own, the rest share tag="_other".
 */
import {
  type CounterCell,
  type CounterFamily,
  type GaugeCell,
  type GaugeFamily,
  type HistogramCell,
  MetricsRegistry,
} from "../metrics/registry.ts";

export const RELAY_METRICS_TAGS_MAX = 200;
const OTHER_TAG = "_other";

/** The cells one tag's traffic counts into. */
export interface RelayTagCells {
  readonly published: CounterCell;
  readonly acked: CounterCell;
  readonly delivered: CounterCell;
}

/**
 * Sets replica_up for the replicas the relay's client has now (the members of the group it
 * follows, which change with add-replica and remove-replica) and drops the series of those
 * it no longer has: a removed replica's series would otherwise stay at its last value (1)
 * for as long as the relay runs. `published` holds the ids with a series, kept across scrapes.
 */
function syncReplicaUp(
  family: GaugeFamily,
  published: Set<string>,
  replicas: readonly { readonly id: number; readonly state: string }[],
): void {
  const members = new Set(replicas.map((replica) => String(replica.id)));
  for (const id of published) {
    if (members.has(id)) continue;
    family.remove(id);
    published.delete(id);
  }
  for (const replica of replicas) {
    const id = String(replica.id);
    family.with(id).set(replica.state === "ready" ? 1 : 0);
    published.add(id);
  }
}

/** What the relay reads at each scrape. */
export interface RelayState {
  readonly connections: number;
  readonly subscriptions: number;
  readonly publishers: number;
  readonly publishBytesHeld: number;
  /** The members of the group the relay's client follows now, and each one's session state (FitbClient.replicaStates). */
  readonly replicas: readonly { readonly id: number; readonly state: string }[];
  /** The replica group the relay's client follows (FitbClient.membership); absent: not reported. */
  readonly membership?: {
    readonly epoch: number | null;
    readonly changes: number;
    readonly refused: number;
    /** FitbClient.membership: the group's f exceeds the cluster file's (the file is stale), and the epochs warned about. */
    readonly staleFile?: boolean;
    readonly staleFileWarnings?: number;
  };
}

export class RelayMetrics {
  readonly registry = new MetricsRegistry();
  readonly connectionsAccepted: CounterCell;
  readonly connectionsClosedBadInput: CounterCell;
  readonly subscriptionsEndedSlow: CounterCell;
  readonly publishAck: HistogramCell;
  readonly delivery: HistogramCell;
  private readonly published: CounterFamily;
  private readonly acked: CounterFamily;
  private readonly delivered: CounterFamily;
  private readonly refused: CounterFamily;
  private readonly tags = new Map<string, RelayTagCells>();
  private readonly stateGauges: Record<"connections" | "subscriptions" | "publishers" | "publishBytesHeld", GaugeCell>;

  constructor(
    state: () => RelayState,
    private readonly tagsMax = RELAY_METRICS_TAGS_MAX,
  ) {
    const r = this.registry;
    this.connectionsAccepted = r.counter("relay_connections_total", "Line-protocol connections accepted (TCP and Unix socket)").with();
    this.connectionsClosedBadInput = r
      .counter("relay_connections_closed_bad_input_total", "Connections closed because a line was no relay command")
      .with();
    this.subscriptionsEndedSlow = r
      .counter(
        "relay_subscriptions_ended_slow_total",
        "SUBs ended with END <tag> SLOW: their reader fell behind the relay's output bound (it resumes with SUB <tag> <seq>)",
      )
      .with();
    this.published = r.counter(
      "relay_events_published_total",
      "Events given to the relay by PUB or PUBB, counted when answered (under _other until the replicas showed the tag names a channel: an ack, a delivery, or a refusal of the relay's key on it)",
      ["tag"],
    );
    this.acked = r.counter("relay_events_acked_total", "Events acknowledged by the replicas (+OK)", ["tag"]);
    this.delivered = r.counter("relay_events_delivered_total", "Events written to SUB connections", ["tag"]);
    this.refused = r.counter("relay_publishes_refused_total", "PUBs answered -ERR, by error code", ["reason"]);
    this.publishAck = r.histogram("relay_publish_ack_seconds", "A PUB line read to its +OK (the replicas' quorum acked)").with();
    this.delivery = r.histogram("relay_delivery_seconds", "The publisher's signed time to the relay receiving the voted events").with();
    this.stateGauges = {
      connections: r.gauge("relay_connections", "Open line-protocol connections").with(),
      subscriptions: r.gauge("relay_subscriptions", "Open SUBs across connections").with(),
      publishers: r.gauge("relay_publishers", "Tags with a batching publisher now").with(),
      publishBytesHeld: r.gauge("relay_publish_bytes_held", "Event bytes of publishes not yet answered").with(),
    };
    const replicaUp = r.gauge(
      "relay_replica_up",
      "1 if the relay's session to this replica is open, for each member of the replica group the relay's client follows (a replica removed from the group has no series)",
      ["replica"],
    );
    /** The replica ids replica_up has a series for: the members at the last scrape. */
    const replicaSeries = new Set<string>();
    const membership = {
      epoch: r.gauge("relay_membership_epoch", "The replica group's epoch the relay follows; -1 until it has read the group").with(),
      changes: r.gauge("relay_membership_changes", "Replica groups the relay moved to since it started").with(),
      refused: r
        .gauge(
          "relay_membership_refused",
          "Answers naming a newer replica group that fewer than f+1 replicas backed, and agreed groups it could not vote with, since it started",
        )
        .with(),
      staleFile: r
        .gauge(
          "relay_membership_file_stale",
          "1 while the replica group the relay follows tolerates more faults than its cluster file says: the file is unsafe for new clients and hosts (distribute `fitb cluster export`'s)",
        )
        .with(),
      staleFileWarnings: r
        .gauge("relay_membership_file_stale_warnings", "Epochs in which the relay warned that its cluster file is stale, since it started")
        .with(),
    };
    r.onScrape(() => {
      const now = state();
      if (now.membership !== undefined) {
        membership.epoch.set(now.membership.epoch ?? -1);
        membership.changes.set(now.membership.changes);
        membership.refused.set(now.membership.refused);
        membership.staleFile.set(now.membership.staleFile === true ? 1 : 0);
        membership.staleFileWarnings.set(now.membership.staleFileWarnings ?? 0);
      }
      for (const key of ["connections", "subscriptions", "publishers", "publishBytesHeld"] as const) this.stateGauges[key].set(now[key]);
      syncReplicaUp(replicaUp, replicaSeries, now.replicas);
    });
  }

  /**
   * The cells of a tag that exists (its own up to the bound, then the shared "_other"):
   * call it once the replicas answered for the tag as a channel (an ack, a delivery, a
   * refusal of the key on it: UNAUTHORIZED, which a replica answers only for a channel it
   * holds), not on a client's word, or tags that name no channel would take the series' places.
   */
  tag(tag: string): RelayTagCells {
    const found = this.tags.get(tag);
    if (found !== undefined) return found;
    // Tags come from whoever connects: past the bound none is remembered.
    if (this.tags.size >= this.tagsMax) return this.cellsFor(OTHER_TAG);
    const cells = this.cellsFor(tag);
    this.tags.set(tag, cells);
    return cells;
  }

  /** The cells a refused publish to `tag` counts in: the tag's own if it has them, else "_other" (no series is made for it). */
  refusedTag(tag: string): RelayTagCells {
    return this.tags.get(tag) ?? this.cellsFor(OTHER_TAG);
  }

  private cellsFor(label: string): RelayTagCells {
    return { published: this.published.with(label), acked: this.acked.with(label), delivered: this.delivered.with(label) };
  }

  /** A PUB answered -ERR: `code` is the error code of the line. */
  refusedWith(code: string): void {
    this.refused.with(code).inc();
  }
}
