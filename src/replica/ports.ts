/**
 * The ports the replica runtime reaches the outside world through, besides its listeners:
 * the clock (wall time, a monotonic clock for measurements, repeating timers and the end
 * of the event-loop turn) and the transport of peer messages. The shipped replica runs on
 * `systemClock` and its PeerMesh; the simulator (src/sim/runtime) gives the same runtime a
 * simulated clock and network, so one seed replays a run exactly. The disk port is
 * storage/disk.ts.
 */

/** A timer `every` returned, to cancel it. */
export type ClockTimer = { readonly cancel: () => void };

export interface Clock {
  /** Wall-clock milliseconds since the epoch (request timestamps, retention, timeouts). */
  now(): number;
  /** Milliseconds from an arbitrary origin that never goes back, for durations in metrics. */
  monotonic(): number;
  /** Runs `run` every `ms` milliseconds until cancelled. */
  every(ms: number, run: () => void): ClockTimer;
  /** Runs `run` once the current event-loop turn is over (the group commit's end of turn). */
  afterTurn(run: () => void): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  every: (ms, run) => {
    const timer = setInterval(run, ms);
    return { cancel: () => clearInterval(timer) };
  },
  afterTurn: (run) => void setImmediate(run),
};

/** Where the ordering driver and state transfer send peer messages (the PeerMesh, or the simulated network). */
export interface PeerTransport {
  /** Sends to one peer; false when it could not be queued (the peer is down or its queue full). */
  send(to: number, bytes: Uint8Array): boolean;
  /** Sends to every other replica. */
  broadcast(bytes: Uint8Array): void;
}
