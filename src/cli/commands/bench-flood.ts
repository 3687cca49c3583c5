/**
 * The flood of `fitb bench --mix`, in a worker thread: P publishers saturating one channel
 * as fast as acknowledgements allow, on their own client and their own event loop, so the
 * measuring thread's latencies are not those of its own flood.
 *
 * Protocol with the bench (structured-clone messages):
 *   in:  {t:"start", plan}   connect, then publish until told to stop
 *        {t:"mark"}          answer the counts so far
 *        {t:"stop"}          stop publishing, wait for what is in flight, close, answer
 *                            (the bench then terminates the thread)
 *   out: {t:"ready"} once connected; {t:"counts", ...FloodCounts} after mark and stop;
 *        {t:"failed", error} if it cannot go on (the bench reports it and exits 1).
 */
import { randomBytes } from "node:crypto";
import { FitbClient } from "../../client/client.ts";
import { describeError } from "../../client/errors.ts";
import { Publisher } from "../../client/publisher.ts";
import type { CrashNoneTargets } from "../../client/request-tracker.ts";
import { loadClientSetup } from "../../client/setup.ts";

/** What the bench hands the flood thread. */
export interface FloodPlan {
  readonly configPath: string;
  readonly keyPath: string;
  readonly tag: string;
  readonly size: number;
  readonly publishers: number;
  readonly connectTimeoutMs: number;
  readonly timeoutMs: number;
  /** --crash-none-targets of the bench: a crash/none flood goes where the measured channel's publishes go. */
  readonly crashNoneTargets: CrashNoneTargets | undefined;
}

export interface FloodCounts {
  /** Events acknowledged (ordered or stored by a quorum). */
  readonly acked: number;
  /**
   * OVERLOADED answers to the flood's publish requests, one per replica and refusal
   * (priority shedding, a full pending pool): each was asked again, so shedding slows the
   * flood down and loses nothing.
   */
  readonly shed: number;
  /** Events that failed (not acknowledged in time, refused for good). */
  readonly failed: number;
  readonly firstError: string | null;
  /** performance.timeOrigin + now() of this thread when counted: comparable across threads. */
  readonly atMs: number;
}

export type FloodIn = { t: "start"; plan: FloodPlan } | { t: "mark" } | { t: "stop" };
export type FloodOut = { t: "ready" } | ({ t: "counts" } & FloodCounts) | { t: "failed"; error: string };

declare const self: Worker;

let acked = 0;
let failed = 0;
let firstError: string | null = null;
let running = false;
let streams: Promise<void>[] = [];
let client: FitbClient | null = null;

function post(message: FloodOut): void {
  self.postMessage(message);
}

function counts(): FloodOut {
  const shed = client?.transientRefusals.get("OVERLOADED") ?? 0;
  return { t: "counts", acked, shed, failed, firstError, atMs: performance.timeOrigin + performance.now() };
}

async function start(plan: FloodPlan): Promise<void> {
  const setup = loadClientSetup(plan.configPath, plan.keyPath);
  client = await FitbClient.connect({
    config: setup.config,
    key: setup.key,
    timeouts: { connectMs: plan.connectTimeoutMs, requestMs: plan.timeoutMs, queryMs: plan.timeoutMs },
    ...(plan.crashNoneTargets === undefined ? {} : { crashNoneTargets: plan.crashNoneTargets }),
  });
  running = true;
  const event = new Uint8Array(plan.size);
  event.set(new Uint8Array(randomBytes(Math.min(8, plan.size))));
  streams = Array.from({ length: plan.publishers }, () => flood(new Publisher(client as FitbClient, plan.tag), event));
  post({ t: "ready" });
}

async function flood(publisher: Publisher, event: Uint8Array): Promise<void> {
  while (running) {
    if (!publisher.hasRoom(event.byteLength)) await publisher.waitForRoom(event.byteLength);
    if (!running) break;
    publisher.publish(event).then(
      () => {
        acked++;
      },
      (error: unknown) => {
        failed++;
        firstError ??= describeError(error);
      },
    );
  }
  await publisher.close();
}

self.onmessage = (message: MessageEvent<FloodIn>) => {
  const input = message.data;
  switch (input.t) {
    case "start":
      start(input.plan).catch((error: unknown) => post({ t: "failed", error: describeError(error) }));
      return;
    case "mark":
      post(counts());
      return;
    case "stop":
      running = false;
      Promise.all(streams)
        .catch(() => undefined)
        .then(() => {
          client?.close();
          post(counts());
        });
      return;
  }
};
