/**
 * The relay's server: it accepts line-protocol connections (wire/PROTOCOL.md section
 * 11) on a TCP port, a Unix socket (unix-socket.ts), or both, and serves them all
 * through one FitbClient, signing with one key. Each listener has its own bound on
 * connections, and the client's subscriptions keep a reserve for the socket's connections
 * (limits.ts tcpSubscriptionsMax), so that local accounts filling the TCP port cannot lock
 * the probes out of the socket. The
 * publishes of every connection to one tag go through one shared Publisher, so that
 * concurrent scripts' events travel in the same signed requests (src/README.md §3:
 * signatures are per frame, so a relay batches).
 *
 * The server only accepts and routes; RelayConnection holds the per-connection state.
 * It does not own the client: whoever made the client closes it after `stop()`.
 */
import type { Socket, SocketHandler, TCPSocketListener, UnixSocketListener } from "bun";
import type { FitbClient } from "../client/client.ts";
import { ChannelWatch } from "../client/channel-watch.ts";
import { describeError, InvalidInputError, QueueFullError } from "../client/errors.ts";
import { Publisher } from "../client/publisher.ts";
import { isPattern } from "../client/pattern.ts";
import { type PatternHost, PatternSubscription } from "../client/pattern-subscription.ts";
import type { ChannelInfo } from "../client/queries.ts";
import type { BatchHandler, SubscribeOptions, SubscriptionHandle } from "../client/subscription.ts";
import { formatAddress } from "../config/cluster.ts";
import { errLine } from "./format.ts";
import { REAL_RELAY_TIMERS, RelayConnection, type LineSocket, type RelayBackend, type RelayTimers } from "./connection.ts";
import type { RelayMetrics } from "./metrics.ts";
import { resolveRelayLimits, tcpSubscriptionsMax, type RelayLimits, type ResolvedRelayLimits } from "./limits.ts";
import { RelayOutputBytes } from "./output-bytes.ts";
import { PublishBytesBudget } from "./publish-bytes.ts";
import { formatPublicKey } from "../crypto/keys.ts";
import { removeSocket, socketPathProblem, withSocketUmask } from "./unix-socket.ts";

/** How long `stop()` lets connections receive their last answers before closing them. */
export const RELAY_STOP_GRACE_MS = 5_000;
/**
 * TCP keepalive on client connections: a client that vanished while only listening
 * (a SUB with no events) is found by the probes instead of holding its subscription. A
 * client that exited after its FIN (a `timeout 5 nc` subscriber) looks like `nc -N`, which
 * still reads, until its host forgets the connection (Linux: tcp_fin_timeout, 60 s) and
 * answers a probe with a reset: probing from 10 s of silence (each answered probe starts
 * the 10 s again) frees its subscriptions a few seconds after that, where a first probe at
 * 60 s met the host still answering and the next came a minute later. Bun probes every
 * second once it starts and gives up after 10 unanswered (TCP_KEEPINTVL 1, TCP_KEEPCNT 10):
 * a client whose host went silent is dropped after about 20 s.
 */
export const RELAY_KEEPALIVE_DELAY_MS = 10_000;

export interface RelayServerOptions {
  /** The connected client the relay publishes and subscribes through. */
  readonly client: FitbClient;
  /** The TCP port's host (unused when `port` is null). */
  readonly hostname: string;
  /**
   * 0 picks a free port (see `port`); null listens on no TCP port (`--listen none`), and
   * then `socketPath` is required.
   */
  readonly port: number | null;
  /**
   * A Unix socket to listen on (mode 0600). The caller clears a stale socket file first
   * (clearStaleSocket); a path in use fails the start.
   */
  readonly socketPath?: string;
  readonly limits?: Partial<RelayLimits>;
  /** One line per event worth an operator's attention. */
  readonly log?: (message: string) => void;
  /** Counts the relay's traffic for `--metrics` (metrics.ts). */
  readonly metrics?: RelayMetrics;
  /** The connections' clock and timers (tests drive them by hand); default the real ones. */
  readonly timers?: RelayTimers;
}

/** The relay could not listen (address in use, not an address of this host, ...). */
export class RelayListenError extends Error {
  override name = "RelayListenError";
}

interface SocketData {
  connection: RelayConnection | null;
}

/** Which listener a connection came in on; each has its own bound on connections. */
type ListenerKind = "tcp" | "unix";

const LISTENER_NAMES: Readonly<Record<ListenerKind, string>> = { tcp: "the TCP port", unix: "the Unix socket" };

/** What the relay tells a SUB refused at its client's bound on subscriptions. */
export function relaySubscriptionsFull(subscriptionsMax: number): string {
  return (
    `the relay has ${subscriptionsMax} subscriptions open across all its connections; at most ${subscriptionsMax} ` +
    "(the cluster's connection_subscriptions_max; a pattern SUB takes one per channel it follows)"
  );
}

/** What the relay tells a SUB from the TCP port refused at the port's share of the subscriptions. */
export function relayTcpSubscriptionsFull(tcpMax: number, subscriptionsMax: number): string {
  return (
    `connections on the TCP port hold ${tcpMax} of the relay's subscriptions; at most ${tcpMax} ` +
    `(the rest of the cluster's connection_subscriptions_max of ${subscriptionsMax} is kept for the Unix socket; ` +
    "a pattern SUB takes one per channel it follows)"
  );
}

export class RelayServer {
  readonly hostname: string;
  readonly limits: ResolvedRelayLimits;
  private readonly client: FitbClient;
  private readonly listener: TCPSocketListener<SocketData> | null;
  private readonly unixListener: UnixSocketListener<SocketData> | null;
  /** The Unix socket listened on, or null. */
  readonly socketPath: string | null;
  private readonly connections = new Set<RelayConnection>();
  private readonly connectionCounts: Record<ListenerKind, number> = { tcp: 0, unix: 0 };
  /** The client's subscriptions held for each listener's connections (a pattern's, one per channel), starting ones included. */
  private readonly subscriptionCounts: Record<ListenerKind, number> = { tcp: 0, unix: 0 };
  /** The channel list for pattern SUBs, read once per interval for all of them. */
  private readonly channelWatch: ChannelWatch<ChannelInfo>;
  /** Least recently used first, so the tag retired to make room is the stalest idle one. */
  private readonly publishers = new Map<string, Publisher>();
  private readonly publishBytes: PublishBytesBudget;
  private readonly outputBytes: RelayOutputBytes;
  /** One per listener: they differ only in whose share of the subscriptions a SUB takes. */
  private readonly backends: Readonly<Record<ListenerKind, RelayBackend>>;
  private readonly log: (message: string) => void;
  private readonly goneWaiters: (() => void)[] = [];
  private stopping: Promise<void> | null = null;

  private constructor(options: RelayServerOptions) {
    this.hostname = options.hostname;
    this.client = options.client;
    this.limits = resolveRelayLimits(options.limits);
    this.log = options.log ?? (() => undefined);
    this.publishBytes = new PublishBytesBudget(this.limits.publishBytesMax);
    this.outputBytes = new RelayOutputBytes(this.limits.relayOutboundBytesMax, this.limits.relayAnswerOutboundBytesMax);
    this.channelWatch = new ChannelWatch<ChannelInfo>(() => this.client.listChannelClasses());
    const timers = options.timers ?? REAL_RELAY_TIMERS;
    const logSlow = throttledLog(this.log, SLOW_LOG_INTERVAL_MS, () => timers.now());
    const backendOf = (kind: ListenerKind): RelayBackend => ({
      limits: this.limits,
      publishBytes: this.publishBytes,
      outputBytes: this.outputBytes,
      timers: options.timers ?? REAL_RELAY_TIMERS,
      metrics: options.metrics ?? null,
      publisherFor: (tag) => this.publisherFor(tag),
      subscribe: (tag, subscribeOptions, onBatch) => this.subscribe(kind, tag, subscribeOptions, onBatch),
      log: this.log,
      logSlow,
      keyNote: ` (key ${formatPublicKey(this.client.publicKey)} of this relay)`,
    });
    this.backends = { tcp: backendOf("tcp"), unix: backendOf("unix") };
    this.socketPath = options.socketPath ?? null;
    if (options.port === null && this.socketPath === null) {
      throw new RelayListenError("the relay needs a TCP port or a Unix socket to listen on; neither was given");
    }
    this.listener = options.port === null ? null : this.listen(options.hostname, options.port);
    try {
      this.unixListener = this.socketPath === null ? null : this.listenUnix(this.socketPath);
    } catch (error) {
      this.listener?.stop(true);
      throw error;
    }
  }

  /** Starts listening; throws RelayListenError when the address cannot be used. */
  static listen(options: RelayServerOptions): RelayServer {
    return new RelayServer(options);
  }

  /** Whether the relay listens on a TCP port (not with `--listen none`). */
  get listensOnTcp(): boolean {
    return this.listener !== null;
  }

  /** The port listened on (the one chosen when 0 was asked for); throws when there is none. */
  get port(): number {
    if (this.listener === null) throw new Error("the relay listens on no TCP port (--listen none)");
    return this.listener.port;
  }

  /** HOST:PORT of the TCP port; throws when there is none (see `listensOnTcp`). */
  get address(): string {
    return formatAddress(this.hostname, this.port);
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** `SUB`s open across all connections. */
  get subscriptionCount(): number {
    let count = 0;
    for (const connection of this.connections) count += connection.subscriptionCount;
    return count;
  }

  /** Tags with a publisher now. */
  get publisherCount(): number {
    return this.publishers.size;
  }

  /** Event bytes of publishes not yet answered, across every connection. */
  get publishBytesHeld(): number {
    return this.publishBytes.usedBytes;
  }

  /** Output bytes waiting for readers, across every connection. */
  get outputBytesHeld(): number {
    return this.outputBytes.usedBytes;
  }

  /**
   * Stops accepting, ends every subscription with `END <tag> SHUTDOWN`, gives the
   * connections up to `graceMs` to receive the answers of commands already received,
   * waits for the publishers to finish, then closes what is left.
   */
  stop(graceMs = RELAY_STOP_GRACE_MS): Promise<void> {
    this.stopping ??= this.stopWithin(graceMs);
    return this.stopping;
  }

  private async stopWithin(graceMs: number): Promise<void> {
    const deadline = Date.now() + graceMs;
    this.listener?.stop(false);
    this.unixListener?.stop(false);
    if (this.socketPath !== null) removeSocket(this.socketPath);
    for (const connection of this.connections) connection.shutdown();
    this.channelWatch.stop();
    await this.untilOrDeadline(() => this.connections.size === 0, deadline);
    this.listener?.stop(true);
    this.unixListener?.stop(true);
    const closing = [...this.publishers.values()].map((publisher) => publisher.close());
    this.publishers.clear();
    await Promise.race([Promise.all(closing), Bun.sleep(Math.max(0, deadline - Date.now()))]);
  }

  private async untilOrDeadline(done: () => boolean, deadline: number): Promise<void> {
    while (!done()) {
      const left = deadline - Date.now();
      if (left <= 0) return;
      await Promise.race([new Promise<void>((resolve) => this.goneWaiters.push(resolve)), Bun.sleep(left)]);
    }
  }

  // -------------------------------------------------------------------------------------
  // Listening
  // -------------------------------------------------------------------------------------

  private listen(hostname: string, port: number): TCPSocketListener<SocketData> {
    try {
      // A client that sends FIN after its last command (nc -N) still gets its answers.
      return Bun.listen<SocketData>({ hostname, port, allowHalfOpen: true, data: { connection: null }, socket: this.handlers("tcp") });
    } catch (error) {
      throw new RelayListenError(listenFailure(formatAddress(hostname, port), error));
    }
  }

  private listenUnix(path: string): UnixSocketListener<SocketData> {
    const problem = socketPathProblem(path);
    if (problem !== null) throw new RelayListenError(problem);
    try {
      return withSocketUmask(() =>
        Bun.listen<SocketData>({ unix: path, allowHalfOpen: true, data: { connection: null }, socket: this.handlers("unix") }),
      );
    } catch (error) {
      throw new RelayListenError(listenFailure(path, error));
    }
  }

  private handlers(kind: ListenerKind): SocketHandler<SocketData> {
    return {
      open: (socket) => this.onOpen(socket, kind),
      data: (socket, chunk) => socket.data.connection?.onData(chunk),
      drain: (socket) => socket.data.connection?.onDrain(),
      end: (socket) => socket.data.connection?.onEnd(),
      close: (socket) => socket.data.connection?.onClose(),
      error: (socket, error) => {
        this.log(`relay connection from ${socket.remoteAddress || "the Unix socket"}: ${describeError(error)}`);
      },
    };
  }

  private onOpen(socket: Socket<SocketData>, kind: ListenerKind): void {
    socket.data = { connection: null };
    const open = this.connectionCounts[kind];
    if (this.stopping !== null || open >= this.limits.connectionsMax) {
      const why =
        this.stopping !== null
          ? "the relay is stopping"
          : `${open} connections open on ${LISTENER_NAMES[kind]}; at most ${this.limits.connectionsMax}`;
      socket.write(errLine("OVERLOADED", why));
      socket.end();
      return;
    }
    // TCP options (no-ops on the Unix socket).
    socket.setNoDelay(true);
    socket.setKeepAlive(true, RELAY_KEEPALIVE_DELAY_MS);
    const lineSocket: LineSocket = {
      write: (data) => socket.write(data),
      pause: () => socket.pause(),
      resume: () => socket.resume(),
      end: () => socket.end(),
      terminate: () => socket.terminate(),
    };
    const backend = this.backends[kind];
    const connection = new RelayConnection(lineSocket, backend, (gone) => this.onGone(gone, kind));
    backend.metrics?.connectionsAccepted.inc();
    this.connections.add(connection);
    this.connectionCounts[kind]++;
    socket.data.connection = connection;
  }

  private onGone(connection: RelayConnection, kind: ListenerKind): void {
    if (this.connections.delete(connection)) this.connectionCounts[kind]--;
    for (const wake of this.goneWaiters.splice(0)) wake();
  }

  // -------------------------------------------------------------------------------------
  // The backend connections use
  // -------------------------------------------------------------------------------------

  /**
   * The shared publisher of `tag`. The number of tags is bounded: a new tag retires the
   * least recently used idle publisher, and if every publisher is busy the publish is
   * refused with OVERLOADED rather than growing without bound.
   */
  private publisherFor(tag: string): Publisher {
    const existing = this.publishers.get(tag);
    if (existing !== undefined) {
      this.publishers.delete(tag);
      this.publishers.set(tag, existing);
      return existing;
    }
    if (this.publishers.size >= this.limits.publishersMax) this.retireIdlePublisher();
    const publisher = new Publisher(this.client, tag);
    this.publishers.set(tag, publisher);
    return publisher;
  }

  private retireIdlePublisher(): void {
    for (const [tag, publisher] of this.publishers) {
      if (publisher.queuedEvents === 0 && publisher.inflightBatches === 0) {
        this.publishers.delete(tag);
        void publisher.close();
        return;
      }
    }
    throw new QueueFullError(`publishes to ${this.publishers.size} tags are in flight; at most ${this.limits.publishersMax}`);
  }

  /** `kind`: the listener of the connection that asked, whose share of the subscriptions it takes. */
  private subscribe(kind: ListenerKind, tag: string, options: SubscribeOptions, onBatch: BatchHandler): Promise<SubscriptionHandle> {
    // A pattern (net.*, net.>) follows every matching channel; a tag, that channel.
    return isPattern(tag) ? this.subscribePattern(kind, tag, options, onBatch) : this.subscribeChannel(kind, tag, options, onBatch);
  }

  /**
   * One channel through the client. Its bound on subscriptions is the relay's across
   * every connection, so a refusal there says so: in the client's words it would read as
   * if the connection that asked held them all. When there is a Unix socket, the TCP
   * port's connections hold at most their share (tcpSubscriptionsMax), so the socket's keep
   * the rest whatever the port's users subscribe to.
   */
  private async subscribeChannel(
    kind: ListenerKind,
    tag: string,
    options: SubscribeOptions,
    onBatch: BatchHandler,
  ): Promise<SubscriptionHandle> {
    if (kind === "tcp" && this.socketPath !== null) {
      const subscriptionsMax = this.client.limits.subscriptionsMax;
      const tcpMax = tcpSubscriptionsMax(subscriptionsMax);
      if (this.subscriptionCounts.tcp >= tcpMax) throw new QueueFullError(relayTcpSubscriptionsFull(tcpMax, subscriptionsMax));
    }
    // Counted while it starts, so that SUBs started together cannot all pass the look above.
    this.subscriptionCounts[kind]++;
    let subscription: SubscriptionHandle;
    try {
      subscription = await this.client.subscribe(tag, options, onBatch);
    } catch (error) {
      this.subscriptionCounts[kind]--;
      // The client refuses a subscribe with QueueFullError only at its subscription bound.
      if (error instanceof QueueFullError) throw new QueueFullError(relaySubscriptionsFull(this.client.limits.subscriptionsMax));
      throw error;
    }
    return this.counted(kind, subscription);
  }

  /** The subscription, given back to its listener's count once closed or ended, whichever comes first. */
  private counted(kind: ListenerKind, subscription: SubscriptionHandle): SubscriptionHandle {
    let held = true;
    const release = (): void => {
      if (!held) return;
      held = false;
      this.subscriptionCounts[kind]--;
    };
    subscription.done.then(release, release);
    return {
      tag: subscription.tag,
      done: subscription.done,
      close: () => {
        release();
        return subscription.close();
      },
    };
  }

  /**
   * A pattern, as FitbClient.subscribePattern follows one, except that each matching
   * channel is subscribed through subscribeChannel, whose refusal at the subscription
   * bound names the relay's bound, and the channel list is the relay's own watch.
   */
  private subscribePattern(
    kind: ListenerKind,
    pattern: string,
    options: SubscribeOptions,
    onBatch: BatchHandler,
  ): Promise<SubscriptionHandle> {
    if (options.from !== undefined) {
      return Promise.reject(
        new InvalidInputError("BAD_REQUEST", "a pattern SUB is live and takes no <from-seq> (channel seqs differ between channels)"),
      );
    }
    const host: PatternHost = {
      listChannels: () => this.client.listChannelClasses(),
      watchChannels: (listener) => this.channelWatch.listen(listener),
      subscribe: (tag, channelOptions, handler) => this.subscribeChannel(kind, tag, channelOptions, handler),
      subscriptionsMax: this.client.config.limits.connectionSubscriptionsMax,
    };
    return PatternSubscription.start(pattern, host, options, onBatch);
  }
}

/** One line naming the address and what is wrong with it. */
/** Why listening on `address` failed, in words an operator can act on (`what` listens: relay, replica, ...). */
export function listenFailure(address: string, error: unknown, what = "relay"): string {
  const text = describeError(error);
  const code = (error as { code?: unknown } | null)?.code;
  if (code === "EADDRINUSE" || /EADDRINUSE|address already in use|in use/i.test(text)) {
    return `${address} is already in use (${what === "" ? "another program is" : `another ${what} or program is`} listening there)`;
  }
  if (code === "EADDRNOTAVAIL" || /EADDRNOTAVAIL|not available|cannot assign/i.test(text)) {
    return `${address} is not an address of this host`;
  }
  if (code === "EACCES" || /EACCES|permission/i.test(text)) return `${address}: permission denied (ports below 1024 need privileges)`;
  return `cannot listen on ${address}: ${text}`;
}

/** SLOW ends are logged at most this often (a client that subscribes and never reads would fill the log otherwise). */
export const SLOW_LOG_INTERVAL_MS = 10_000;

/**
 * `log`, at most one line per `intervalMs`: the first message at once, and the next one due
 * says how many were left out since.
 */
export function throttledLog(log: (message: string) => void, intervalMs: number, now: () => number): (message: string) => void {
  let lastMs = Number.NEGATIVE_INFINITY;
  let skipped = 0;
  return (message) => {
    const at = now();
    // A clock stepped back (at < lastMs) makes the line due, rather than silent until it catches up.
    if (at >= lastMs && at - lastMs < intervalMs) {
      skipped++;
      return;
    }
    lastMs = at;
    log(skipped === 0 ? message : `${message} (and ${skipped} more like it since the last such line)`);
    skipped = 0;
  };
}
