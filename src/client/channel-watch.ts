/**
 * One watch on the channel list per client, shared by all its wildcard subscriptions
 * (pattern-subscription.ts): a relay with many `SUB net.*` connections reads the list
 * once per interval, not once per subscription. It polls only while someone listens.
 */

/** How often the channel list is read while a wildcard subscription is open. */
export const CHANNEL_WATCH_MS = 1_000;

export type ChannelListListener<T> = (
  outcome: { readonly ok: true; readonly channels: readonly T[] } | { readonly ok: false; readonly error: unknown },
) => void;

export class ChannelWatch<T> {
  private readonly listeners = new Set<ChannelListListener<T>>();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private polling = false;

  constructor(
    private readonly list: () => Promise<readonly T[]>,
    private readonly intervalMs = CHANNEL_WATCH_MS,
  ) {}

  /** Calls `listener` with each reading of the list from now on; returns the unsubscribe. */
  listen(listener: ChannelListListener<T>): () => void {
    this.listeners.add(listener);
    this.schedule();
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0 && this.timer !== null) {
        clearTimeout(this.timer);
        this.timer = null;
      }
    };
  }

  /** Stops polling for good (the client is closing). */
  stop(): void {
    this.listeners.clear();
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private schedule(): void {
    if (this.timer !== null || this.polling || this.listeners.size === 0) return;
    this.timer = setTimeout(() => void this.poll(), this.intervalMs);
  }

  private async poll(): Promise<void> {
    this.timer = null;
    this.polling = true;
    let outcome: Parameters<ChannelListListener<T>>[0];
    try {
      outcome = { ok: true, channels: await this.list() };
    } catch (error) {
      outcome = { ok: false, error };
    }
    this.polling = false;
    for (const listener of [...this.listeners]) listener(outcome);
    this.schedule();
  }
}
