/**
 * Deliberately broken ordering cores, reachable only from tests: each overrides one seam
 * of OrderingCore with a classic bug (core/ordering/PROTOCOL.md §9). The simulator must catch every one.
 */
import { type CoreConfig, type CoreCrypto, OrderingCore, type PersistedRecord, type ReplicaId } from "../../src/core/ordering/index.ts";
import type { CoreFactory } from "../../src/sim/simulator.ts";

/** Quorum 2f instead of 2f+1 (the `>` against `>=` family of bugs, bft-smart #48/#68). */
class QuorumTwoF extends OrderingCore {
  protected override quorumSize(): number {
    return 2 * this.cfg.f;
  }
}

/** Counts vote messages instead of distinct signers (bft-smart #62, fabric #370, besu #1736). */
class CountsMessages extends OrderingCore {
  private messages = 0;
  protected override voteKey(_signer: ReplicaId): number {
    return this.messages++;
  }
}

/** Matches votes on (view, seq) only, ignoring the digest (pbft-java with NoopDigester). */
class DigestBlind extends OrderingCore {
  protected override voteMatches(): boolean {
    return true;
  }
}

/** Installs the leader's O without recomputing it from the VIEW_CHANGEs (bft-smart PR #121). */
class TrustsNewView extends OrderingCore {
  protected override recomputesNewView(): boolean {
    return false;
  }
}

/** Takes a decision in catch-up on one peer's report, though COMMITs are not signed (core/ordering/PROTOCOL.md §4). */
class TrustsOneReport extends OrderingCore {
  protected override decisionClaimsNeeded(): number {
    return 1;
  }
}

type Ctor = new (cfg: CoreConfig, crypto: CoreCrypto, restored?: readonly PersistedRecord[]) => OrderingCore;

function factory(C: Ctor): CoreFactory {
  return (cfg, crypto, restored) => new C(cfg, crypto, restored);
}

export const BROKEN_VARIANTS = {
  quorumTwoF: factory(QuorumTwoF),
  countsMessages: factory(CountsMessages),
  digestBlind: factory(DigestBlind),
  trustsNewView: factory(TrustsNewView),
  trustsOneReport: factory(TrustsOneReport),
} as const;
