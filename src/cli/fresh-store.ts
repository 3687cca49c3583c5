/**
 * A replica of the cluster file that finds no store in its data directory is either new
 * (a cluster starting, or started without it) or one whose directory was wiped (a disk
 * replaced, a directory removed) while the group ran. In the second case it may have
 * voted before, in views and at seqs no record of it names any more; voting again there
 * could contradict what it said then (core/ordering/PROTOCOL.md §2, "A store that lost
 * records"). So before it creates a store it asks the other replicas of the file for
 * their status: when f+1 of them show the group has ordered something (a decided seq, a
 * view or an epoch past the first), at least one correct replica says so, and it starts
 * behind the lost-records fence, which costs the group one vote until a view change it
 * takes part in. A faulty replica alone cannot make it fence.
 *
 * It asks briefly and never waits for replicas that are not there: a cluster whose
 * replicas start together finds nothing listening (or replicas that have ordered nothing)
 * and starts at once. When too few answer, it cannot tell, and starts as a new replica,
 * saying so (the limit of this check: a wiped replica restarted while most of its group is
 * down is not fenced).
 */
import type { ClusterConfig } from "../config/cluster.ts";
import { FitbClient } from "../client/client.ts";
import type { SigningKey } from "../crypto/keys.ts";
import type { Log } from "../replica/log.ts";

/** How long a start with no store asks the group at most. */
export const FRESH_STORE_ASK_MS = 3_000;
/** How long it waits for more status answers once f+1 sessions are up. */
const ANSWER_GRACE_MS = 300;
/** Pause between looks at the sessions. */
const POLL_MS = 25;

/** What the other replicas said, and whether that proves the group ordered before. */
export interface GroupProgress {
  readonly ordered: boolean;
  /** Replicas (not this one) whose answer shows the group ordered something. */
  readonly ordering: readonly number[];
  /** Replicas (not this one) that answered and show nothing ordered. */
  readonly fresh: readonly number[];
  /** Why it stopped asking. */
  readonly why: string;
}

/** A replica's answer shows the group past its start: a decided seq, a view or an epoch. */
function showsOrdered(answer: { readonly lastDecided: number; readonly view: number; readonly epoch?: number | undefined }): boolean {
  return answer.lastDecided > 0 || answer.view > 0 || (answer.epoch ?? 0) > 0;
}

/**
 * Asks the cluster file's other replicas whether the group has ordered anything, for at
 * most `askMs`. `ordered` only on f+1 answers that show it.
 */
export async function askGroupProgress(options: {
  readonly config: ClusterConfig;
  readonly id: number;
  readonly key: SigningKey;
  readonly askMs?: number;
  readonly now?: () => number;
}): Promise<GroupProgress> {
  const { config, id } = options;
  const now = options.now ?? Date.now;
  const needed = config.f + 1;
  const others = config.replicas.map((replica) => replica.id).filter((other) => other !== id);
  const deadline = now() + (options.askMs ?? FRESH_STORE_ASK_MS);
  const client = new FitbClient({ config, key: options.key, timeouts: { queryMs: ANSWER_GRACE_MS * 4 } });
  client.start();
  let ordering: number[] = [];
  let fresh: number[] = [];
  try {
    for (;;) {
      const ready = client.readyReplicas().filter((other) => other !== id);
      const refused = client.refusedReplicaIds().filter((other) => other !== id);
      if (ready.length >= needed || (ready.length > 0 && ready.length + refused.length === others.length)) {
        const status = await client.status({ answerGraceMs: ANSWER_GRACE_MS });
        ordering = [];
        fresh = [];
        for (const replica of status.replicas) {
          if (replica.id === id || replica.answer?.ok !== true) continue;
          (showsOrdered(replica.answer.value) ? ordering : fresh).push(replica.id);
        }
        if (ordering.length >= needed) return { ordered: true, ordering, fresh, why: `${ordering.length} replicas show it` };
        if (others.length - fresh.length < needed)
          return { ordered: false, ordering, fresh, why: `${fresh.length} of ${others.length} replicas have ordered nothing` };
      }
      if (others.length - refused.length < needed)
        return { ordered: false, ordering, fresh, why: `${refused.length} of ${others.length} replicas are not listening` };
      if (now() >= deadline)
        return { ordered: false, ordering, fresh, why: `too few answers within ${options.askMs ?? FRESH_STORE_ASK_MS} ms` };
      await Bun.sleep(POLL_MS);
    }
  } finally {
    client.close();
  }
}

/** Logs what the ask found; true when the replica must start behind the lost-records fence. */
export function judgeFreshStore(progress: GroupProgress, log: Log): boolean {
  const fields = { ordering: progress.ordering, fresh: progress.fresh, why: progress.why };
  if (progress.ordered) {
    log.warn(
      "the data directory holds no store and the group has ordered without it: starting as a replica that lost its records (votes fenced until a view change it takes part in)",
      fields,
    );
  } else {
    log.info("the data directory holds no store and the group shows nothing ordered (or too few replicas answered): starting new", fields);
  }
  return progress.ordered;
}
