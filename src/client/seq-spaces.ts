/**
 * The client's sequence spaces (seq.ts): one per tag it publishes to and one for admin
 * commands. Each is learned from the group once, on first use (the channel's CLASS and
 * this key's last seq there), then counted locally; after a REPLAY, or a request that
 * timed out, its last seq is learned again.
 */
import { replyKindOf, type ReplyKind } from "../core/voting/quorum.ts";
import type { ChannelInfo } from "./queries.ts";
import { SeqCounter, spaceName } from "./seq.ts";

/** A sequence space once learned: the channel's CLASS (publishes) and the counter. */
export interface SeqSpace {
  readonly name: string;
  readonly tag: string | null;
  readonly kind: ReplyKind;
  readonly counter: SeqCounter;
  /** Set when a request timed out: its numbers may or may not have been used. */
  stale: boolean;
  relearning: Promise<void> | null;
}

/** The queries a space is learned with (FitbClient's own). */
export interface SpaceQueries {
  channelInfo(tag: string): Promise<ChannelInfo>;
  /** The last seq used in the space of `tag`, with the rule its kind of channel needs (FitbClient.clientSeq). */
  clientSeq(tag: string | null, kind: ReplyKind): Promise<number>;
}

export class SeqSpaces {
  private readonly spaces = new Map<string, Promise<SeqSpace>>();

  constructor(private readonly queries: SpaceQueries) {}

  /** The learned space of `tag` (null: admin), learning it (CLASS and last seq) on first use. */
  space(tag: string | null): Promise<SeqSpace> {
    const name = spaceName(tag);
    const known = this.spaces.get(name);
    if (known !== undefined) return known;
    const learning = this.learnSpace(tag, name);
    this.spaces.set(name, learning);
    // A failed learn is forgotten, so the next call asks again instead of failing forever.
    learning.catch(() => {
      if (this.spaces.get(name) === learning) this.spaces.delete(name);
    });
    return learning;
  }

  private async learnSpace(tag: string | null, name: string): Promise<SeqSpace> {
    const kind: ReplyKind = tag === null ? "admin" : replyKindOf(await this.queries.channelInfo(tag));
    const last = await this.queries.clientSeq(tag, kind);
    return { name, tag, kind, counter: new SeqCounter(last), stale: false, relearning: null };
  }

  /** Learns the space's last seq again, once per epoch however many requests ask. */
  async relearn(space: SeqSpace, epochSeen: number): Promise<void> {
    if (space.counter.epoch !== epochSeen) return;
    if (space.relearning === null) {
      space.relearning = this.queries
        .clientSeq(space.tag, space.kind)
        .then((last) => {
          space.counter.reset(last);
          space.stale = false;
        })
        .finally(() => {
          space.relearning = null;
        });
    }
    await space.relearning;
  }

  /** Forgets what was learned about `tag` (its CLASS may have changed): the next use learns it again. */
  forget(tag: string): void {
    this.spaces.delete(spaceName(tag));
  }
}
