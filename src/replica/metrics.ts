/**
 * The replica's metrics: every family declared here with its help text, so that a scrape
 * shows each of them from the start (README "Metrics" lists them). Names follow
 * Prometheus conventions: `_total` for counters, units last; the exported name has the
 * `fitb_` prefix.
 *
 * Callers count through `inc(name)` for the plain counters, and through the pre-bound
 * cells of `channels` (channel-metrics.ts), `peers` and the latency histograms, so the
 * hot paths add to a number and build no string.
 */
import { ERROR_CODES, type ErrorCode } from "../../wire/types.ts";
import {
  type CounterCell,
  type CounterFamily,
  type GaugeFamily,
  type HistogramCell,
  type HistogramFamily,
  LATENCY_BUCKETS_SECONDS,
  MetricsRegistry,
} from "../metrics/registry.ts";
import type { Canonical } from "../../wire/canonical.ts";

const COUNTERS = {
  requests_total: "Client REQUEST frames received",
  requests_rate_limited_total: "Requests refused because the client's event rate was over its limit",
  client_key_budget_refused_total: "Requests refused before verification: the client key was over its verification budget",
  client_address_budget_refused_total: "Requests refused before verification: the source address was over its verification budget",
  requests_gap_refused_total: "Ordered requests refused before verification: behind a sequence gap (OUT_OF_ORDER)",
  clients_blacklisted_total: "Client keys and addresses blacklisted (a bad request signature, an undecodable or oversize frame)",
  clients_blacklisted_refused_total: "Connections and sessions refused because their address or key is blacklisted",
  clients_tarpitted_total:
    "Connections of blacklisted addresses held open and unread (the tarpit) instead of being reset, until they close or their hold time is up",
  client_reads_backpressured_total:
    "Times a client connection's reads were paused because its frames waiting for the client scheduler were over its bound",
  client_sessions_paused_total:
    "Client sessions not read for a while because their requests were refused before verification too fast (over a budget, or asking what their key may not do)",
  bad_frames_total: "Client frames that did not decode or were not for this port",
  http_requests_refused_total:
    "Connections that began with an HTTP request or a TLS handshake (a browser, curl or scraper at the wrong port), answered 400 in HTTP or closed; their address is not blacklisted",
  events_stored_total: "Events stored by this replica (ordered and unordered channels)",
  batches_decided_total: "Batches decided by the ordering protocol and executed",
  requests_decode_reused_total:
    "Decided requests executed without decoding their body again: this replica had decoded the same bytes when it admitted the request",
  replies_dropped_total: "Replies not sent because the client's connection queue was full",
  events_delivered_total: "Events sent to subscribers (one per subscriber)",
  events_frames_shared_total:
    "EVENTS frames that carried one batch to several subscriptions of one connection (SUBSCRIBE shared): each is one copy instead of one per subscription",
  subscribers_dropped_slow_total: "Subscriptions ended because the subscriber fell behind",
  egress_overtakes_total:
    "Frames written to a client session ahead of less urgent frames that had waited longer (a critical channel's events before a low one's backlog, replies before deliveries)",
  peer_messages_sent_total: "Peer messages handed to a peer link's connection",
  peer_socket_writes_total:
    "Socket writes on peer links: the messages of one event-loop turn go out in one write per peer, so this grows slower than peer_messages_sent_total",
  peer_send_dropped_total: "Peer messages not sent because the link was down or its queue full",
  peer_send_oversized_total: "Peer messages not sent because they exceed the frame limit",
  peer_handshake_failed_total: "Peer handshakes that failed (bad key, config drift, bad signature)",
  peer_handshake_retired_key_total: "Peer handshakes refused because the key was rotated out or its replica removed from the group",
  peer_links_silent_total: "Links to multi-homed peers given up for the next address after going silent",
  peer_links_back_to_preferred_total: "Links to multi-homed peers moved back onto the peer's preferred address",
  peer_frames_rejected_total:
    "Peer frames refused: a failed MAC or sequence check, a frame type a peer link does not carry, or a frame that does not decode",
  peer_messages_rejected_total: "Peer messages that did not validate",
  peer_messages_other_epoch_total:
    "Peer messages of another membership epoch (or from a replica that is not a member of this one), refused",
  peer_messages_other_key_total:
    "Ordering messages refused because the peer's session was opened with a key that is not the epoch's for that replica (a rotated-away key while its rotation waits for the switch)",
  epoch_proofs_unavailable_total:
    "Peer messages of an older epoch whose end this replica keeps no proof of (the peer is further behind than the switches kept, or this replica restarted since)",
  epoch_switches_total:
    "Membership epochs this replica moved to (a decided add-replica, remove-replica, rotate-replica-key or set-f took effect)",
  decisions_past_epoch_end_total:
    "Decisions of an epoch above the checkpoint that ended it, never executed (the next epoch orders from there)",
  refused_first_requests_total:
    "Clients' first requests decided and refused at execution (a correct leader proposes them only in a race with a destroy or an unregister; past 1,024 in a view this replica suspects its leader)",
  peer_flooding_total: "Times a peer was found flooding the ordering core",
  ordering_thread_inputs_dropped_total:
    "Peer messages and client requests not handed to the ordering thread because it had 65,536 steps unanswered (peers retransmit, clients send again)",
  leader_suspected_total: "Times this replica suspected the leader of its view (SUSPECT; the view changes once f+1 do)",
  peer_misbehaviour_total: "Peer messages that proved misbehaviour (bad signature, equivocation)",
  forwarded_requests_dropped_total: "Requests in a peer's FORWARD dropped as not admissible here",
  storage_commits_total: "Storage transactions committed",
  storage_writes_total: "Records written in storage transactions",
  storage_commit_failures_total: "Storage commits that failed",
  storage_corrupt_rows_total: "Rows found damaged at open and deleted",
  snapshot_digest_mismatches_total:
    "States of this replica whose digest differs from the checkpoint's: its core's, or the group's when it joins from the middle of an epoch switch",
  snapshot_bases_written_total: "Base snapshots written",
  snapshot_base_ticks_yielded_total: "Ticks in which a base snapshot being written gave way to urgent (high or critical) requests",
  handshakes_refused_total: "Handshakes refused at the per-address or total bound",
  handshakes_wrong_port_total: "HELLOs refused because a replica called the client port or a client the peer port",
  handshakes_evicted_total: "Open handshakes evicted to make room for new ones",
  handshake_timeouts_total: "Handshakes that did not finish in time",
  client_auth_failed_total: "Client handshakes that failed authentication",
  client_frames_bad_mac_total: "Client frames that failed their MAC check (the session is closed)",
  clients_stuck_closed_total: "Client sessions closed because they did not read their output",
  clients_idle_closed_total: "Idle client sessions closed",
  client_partial_frames_cut_total:
    "Client sessions closed because a frame of theirs was arriving too slowly, or slowest while unfinished frames held more than their bound",
  clients_key_revoked_closed_total: "Client sessions closed because their key left the allow-list (a replica key rotated away or removed)",
  clients_refused_total: "Client sessions refused at a connection bound",
  queries_refused_total: "Queries answered OVERLOADED: over the budget of queries per client key or per address",
  clients_evicted_total: "Client sessions of keys the cluster does not name closed, every slot taken, for a key it names",
  state_transfer_serve_requests_total: "State transfer requests from peers",
  state_transfer_serve_refused_total: "State transfer requests refused",
  state_transfer_served_bytes_total: "State transfer bytes served to peers",
  state_transfer_started_total: "State transfers started by this replica",
  state_transfer_received_bytes_total: "State transfer bytes received",
  state_transfer_completed_total: "State transfers completed",
  state_decided_serve_refused_total:
    "Requests for decisions from the decided log dropped unanswered: the peer was over its budget of bytes a second",
  state_decided_served_from_log_total:
    "Decisions at or below the stable checkpoint sent from the decided log on disk to a peer catching up from an older state",
  state_transfer_rejected_total: "State transfer parts or snapshots rejected",
  state_transfer_sources_dropped_total: "State transfer sources distrusted",
  state_transfer_abandoned_total: "State transfers abandoned",
  state_transfer_source_timeouts_total: "State transfer sources that timed out",
  state_transfer_asks_unsent_total:
    "State transfer asks that could not be sent (no link to the source, or its queue full); asked again, then the next source",
  state_transfer_asks_repeated_total: "State transfer asks repeated because no new part came from the source for a while",
} as const;

const GAUGES = {
  view: "The ordering view this replica is in",
  epoch: "The membership epoch this replica orders in (0: the cluster file's first group)",
  membership_change_pending:
    "1 while a decided membership change (add-replica, remove-replica, rotate-replica-key, set-f) waits for the checkpoint where it takes effect",
  leader: "The leader of the current view (replica id)",
  is_leader: "1 if this replica leads the current view",
  last_decided_seq: "The last decided seq this replica executed",
  stable_checkpoint_seq: "The last stable checkpoint seq",
  subscriptions: "Open channel subscriptions",
  sys_subscriptions: "Open system ($sys) subscriptions",
  subscriptions_replaying: "Subscriptions still replaying retained history before they go live",
  subscriptions_replay_waiting:
    "Replaying subscriptions waiting for their subscriber to read (no room for their next batch on the connection)",
  channels: "Channels in the replicated state",
  answers_held_for_execution: "Answers held until this replica executes what the client saw",
  storage_pending_writes: "Records staged and not yet durable",
  storage_file_bytes: "Size of the storage file",
  storage_disk_free_bytes:
    "Bytes the replica may still write on the filesystem of its data directory (statfs, as an unprivileged user; -1 if it cannot be read). At 0 the replica stops (exit 74)",
  snapshot_base_seq: "Seq of the base snapshot on disk",
  snapshot_base_bytes: "Size of the base snapshot on disk",
  snapshot_pinned_states:
    "Epoch switch points whose state is held in memory for replicas still in an ended epoch (at most the last 4 switches)",
  snapshot_pinned_bytes:
    "Retained batch bytes (body and signature) the pinned switch-point states refer to; those no longer in the live state are kept alive only by the pins",
  handshakes_open: "Handshakes in progress on the client port (on the shared port: peers too)",
  peer_handshakes_open: "Handshakes in progress on the peer port (0 without a peer_port)",
  client_connections: "Open client sessions",
  client_partial_frame_bytes: "Bytes held for client frames still arriving (bounded in all and per address, partial-frames.ts)",
  client_output_bytes: "Bytes queued to client sessions (a frame waiting in a priority queue also counts 256 bytes of bookkeeping)",
  tarpit_connections: "Connections of blacklisted addresses held open and unread now (the tarpit)",
  state_transfer_target_seq: "Seq a state transfer is fetching (0: none)",
  priority_low_admitted_percent: "Share of clients' low publishes admitted by priority shedding now (100: none shed)",
  priority_normal_admitted_percent: "Share of clients' normal publishes admitted by priority shedding now (100: none shed)",
} as const;

export type CounterName = keyof typeof COUNTERS;
export type GaugeName = keyof typeof GAUGES;

/** The modes `fitb_mode{mode}` reports, one of them 1. */
export const MODES = ["normal", "viewChange", "stateTransfer"] as const;
export type Mode = (typeof MODES)[number];

/** The per-class label value of a channel: "byzantine/total", ... */
export const CLASSES = ["crash/none", "crash/total", "byzantine/none", "byzantine/total"] as const;

export class Metrics {
  readonly registry = new MetricsRegistry();
  private readonly counters = new Map<string, CounterCell>();
  private readonly gaugeReads = new Map<string, () => number>();
  private readonly refusedFamily: CounterFamily;
  private readonly refusedCells = new Map<ErrorCode, CounterCell>();
  private readonly modeFamily: GaugeFamily;
  readonly peerUp: GaugeFamily;
  readonly peerLag: GaugeFamily;
  /** Times a peer was muted, by peer and reason (budget, flooding). */
  readonly peerMuted: CounterFamily;
  /** Messages this replica did not send to a peer, by peer and why (link down, queue full). */
  readonly peerSendDropped: CounterFamily;
  /** Peer messages dropped before they were decoded, by peer and reason (peer-inbox.ts, peer-filter.ts). */
  readonly peerDropped: CounterFamily;
  /** Request arrival to "stored"/"ordered" reply, by channel class. */
  readonly publishAck: HistogramFamily;
  /** PRE-PREPARE sent or received to the batch decided. */
  readonly ordering: HistogramCell;
  readonly storageCommit: HistogramCell;
  /** The publisher's signed time to the events' fan-out to subscribers, by class. */
  readonly delivery: HistogramFamily;

  constructor() {
    const r = this.registry;
    for (const [name, help] of Object.entries(COUNTERS)) this.counters.set(name, r.counter(name, help).with());
    this.refusedFamily = r.counter("requests_refused_total", "Requests refused, by the error code the client was sent", ["reason"]);
    for (const code of ERROR_CODES) this.refusedCells.set(code, this.refusedFamily.with(code));
    for (const [name, help] of Object.entries(GAUGES)) {
      const cell = r.gauge(name, help).with();
      r.onScrape(() => cell.set(this.gaugeReads.get(name)?.() ?? 0));
    }
    this.modeFamily = r.gauge("mode", "1 for the mode this replica is in (normal, viewChange, stateTransfer), 0 for the others", ["mode"]);
    for (const mode of MODES) this.modeFamily.with(mode);
    this.peerUp = r.gauge("peer_up", "1 if the authenticated link to this peer is open and the peer answered its PINGs within 2.5 s", [
      "peer",
    ]);
    this.peerLag = r.gauge("peer_lag_seqs", "How many decided seqs this peer is behind this replica, by the COMMITs it sent", ["peer"]);
    this.peerMuted = r.counter("peer_muted_total", "Times a peer was muted (its reads paused, its messages dropped), by reason", [
      "peer",
      "reason",
    ]);
    this.peerSendDropped = r.counter(
      "peer_send_dropped_by_peer_total",
      "Peer messages not sent, by peer and reason: link-down, queue-full (the protocol retransmits)",
      ["peer", "reason"],
    );
    this.peerDropped = r.counter(
      "peer_messages_dropped_total",
      "Peer messages dropped before decoding: muted, executed (an executed seq), another-signer, duplicate (FORWARD), oversize (FORWARD), not-a-map",
      ["peer", "reason"],
    );
    this.publishAck = r.histogram("publish_ack_seconds", "Publish request arrival to this replica's ack (stored or ordered)", ["class"]);
    for (const cls of CLASSES) this.publishAck.with(cls);
    this.ordering = r.histogram("ordering_seconds", "A batch's PRE-PREPARE (proposed or received) to its decision").with();
    this.storageCommit = r.histogram("storage_commit_seconds", "One storage transaction, fsync included").with();
    this.delivery = r.histogram(
      "delivery_seconds",
      "Time from the batch's timestamp (total order: the publisher's signed time; unordered: its arrival at this replica) to the fan-out to live subscribers",
      ["class"],
    );
    for (const cls of CLASSES) this.delivery.with(cls);
  }

  inc(name: CounterName, by = 1): void {
    (this.counters.get(name) as CounterCell).value += by;
  }

  refused(code: ErrorCode): void {
    (this.refusedCells.get(code) as CounterCell).value += 1;
  }

  /** The current value of a counter or gauge (requests_refused_total: over every reason). */
  get(name: CounterName | GaugeName | "requests_refused_total"): number {
    if (name === "requests_refused_total") return this.refusedFamily.total((cell) => cell.value);
    return this.counters.get(name)?.value ?? this.gaugeReads.get(name)?.() ?? 0;
  }

  gauge(name: GaugeName, read: () => number): void {
    this.gaugeReads.set(name, read);
  }

  setMode(mode: Mode): void {
    for (const m of MODES) this.modeFamily.with(m).set(m === mode ? 1 : 0);
  }

  snapshot(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [name, cell] of this.counters) out[name] = cell.value;
    out.requests_refused_total = this.get("requests_refused_total");
    for (const name of Object.keys(GAUGES)) out[name] = this.gaugeReads.get(name)?.() ?? 0;
    return out;
  }

  /**
   * The latency histograms summed over their labels, for the status query (integers, as
   * the wire's canonical CBOR wants): bucket bounds in microseconds, counts per bucket
   * (+Inf last) and the sum. `fitb top` takes the difference of two answers to show the
   * latency of the last interval.
   */
  latencySummary(): { [key: string]: Canonical } {
    const summed = (cells: HistogramCell[]): { [key: string]: Canonical } => {
      const counts = new Array<number>(LATENCY_BUCKETS_SECONDS.length + 1).fill(0);
      let sum = 0;
      for (const cell of cells) {
        cell.counts.forEach((count, i) => {
          counts[i] = (counts[i] as number) + count;
        });
        sum += cell.sum;
      }
      return { counts, sumUs: Math.round(sum * 1e6) };
    };
    return {
      boundsUs: LATENCY_BUCKETS_SECONDS.map((seconds) => Math.round(seconds * 1e6)),
      publishAck: summed(CLASSES.map((cls) => this.publishAck.with(cls))),
      ordering: summed([this.ordering]),
      storageCommit: summed([this.storageCommit]),
      delivery: summed(CLASSES.map((cls) => this.delivery.with(cls))),
    };
  }

  /** The Prometheus text format. */
  prometheus(): Promise<string> {
    return this.registry.text();
  }
}
