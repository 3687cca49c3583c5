/**
 * Byzantine replicas. Each runs the real ordering core (so it knows what to say to look
 * plausible) and then lies about it on the way out: every message it sends passes through
 * `outgoing`, which may drop, duplicate, corrupt, re-sign with mutated fields (ByzzFuzz's
 * small-scope mutations), equivocate, replay or forge. It signs only with its own key:
 * forging another replica's signature is outside the fault model.
 */
import {
  batchBytes,
  type ClientRequest,
  type Commit,
  type NewView,
  NULL_DIGEST,
  type PeerMessage,
  type PrePrepare,
  type ReplicaId,
  type SignedMessage,
  signingBytes,
  type ViewChange,
} from "../core/ordering/index.ts";
import { sha256 } from "./crypto.ts";
import type { Prng } from "./prng.ts";
import { type ByzBehaviour, DELAY_POST_MAX } from "./scenario.ts";

export interface ByzContext {
  readonly id: ReplicaId;
  readonly n: number;
  readonly clusterId: string;
  /** Signs with this replica's own key (never another's: forging one is outside the fault model). */
  signAsSelf(bytes: Uint8Array): Uint8Array;
  now(): number;
  /** Raw network send as this replica; `msg` may be anything. */
  send(to: ReplicaId, msg: unknown, extraDelay?: number): void;
  /** Requests executed somewhere, for replay attacks. */
  executed(): readonly ClientRequest[];
  /** The group's parameters the attacks are tuned to. */
  readonly params: { readonly progressTimeoutTicks: number; readonly logWindow: number; readonly pipelineDepth: number };
}

/** Messages remembered for replays. */
const HISTORY_MAX = 64;
/** Far-future offset for flooded votes and view changes (core/ordering/PROTOCOL.md §9, bug 8). */
const FAR_FUTURE = 1_000_000;
/** Copies of a vote sent back to its signer or to all by a vote stuffer. */
const STUFF_COPIES = 3;
/** Messages a spamming or replaying replica sends each peer per tick (the harness's pump sends as fast as links drain). */
const SPAM_PER_TICK = 8;
/** Real client requests a spammer keeps to forward again, and requests per flooded FORWARD. */
const SPAM_REQUESTS_MAX = 64;
const SPAM_FORWARD_REQUESTS = 16;
/** Validly signed messages a replayer keeps. */
const REPLAY_MAX = 512;
/** Proposals whose split (or release tick) a splitting (or holding) leader remembers, so that a resend repeats it. */
const SPLITS_MAX = 256;

type Signable = SignedMessage;

function isVote(m: PeerMessage): m is Extract<PeerMessage, { t: "PREPARE" | "COMMIT" }> {
  return m.t === "PREPARE" || m.t === "COMMIT";
}

export class ByzantineReplica {
  private readonly history: PeerMessage[] = [];
  private lastViewChange: ViewChange | null = null;
  private highestView = 0;
  private highestSeq = 0;
  /** hold: when the last held proposal goes out. */
  private lastRelease = Number.NEGATIVE_INFINITY;
  /** hold: "view:seq" -> the tick its proposal goes out. */
  private readonly releases = new Map<string, number>();
  /** split: "view:seq" -> the second proposal (null: withheld from the rest). */
  private readonly splits = new Map<string, PrePrepare | null>();
  /** spam: real client requests seen; the round-robin turn; the next STATE_REQUEST nonce. */
  private readonly seenRequests: ClientRequest[] = [];
  private spamTurn = 0;
  private spamNonce = 1;
  /** replay: what was sent and received, and where the replay is. */
  private readonly recorded: PeerMessage[] = [];
  private replayCursor = 0;

  constructor(
    private readonly ctx: ByzContext,
    readonly behaviours: readonly ByzBehaviour[],
    private readonly rng: Prng,
    /** The tick the behaviours turn on; before it the replica sends what its core says. */
    private readonly from = 0,
  ) {}

  private honest(): boolean {
    return this.ctx.now() < this.from;
  }

  has(b: ByzBehaviour): boolean {
    return this.behaviours.includes(b);
  }

  private others(): ReplicaId[] {
    const out: ReplicaId[] = [];
    for (let r = 0; r < this.ctx.n; r++) if (r !== this.ctx.id) out.push(r);
    return out;
  }

  private remember(m: PeerMessage): void {
    this.history.push(m);
    if (this.history.length > HISTORY_MAX) this.history.shift();
  }

  private resign<M extends Signable>(m: M): M {
    m.sig = this.ctx.signAsSelf(signingBytes(m, this.ctx.clusterId));
    return m;
  }

  /** What this replica's honest core wanted to send; decides what actually goes out. */
  outgoing(to: ReplicaId | "all", msg: PeerMessage): void {
    if (this.honest()) {
      this.observe(msg);
      for (const target of to === "all" ? this.others() : [to]) this.ctx.send(target, msg);
      return;
    }
    if (this.has("mute")) return;
    this.remember(msg);
    this.observe(msg);
    if (msg.t === "VIEW_CHANGE") this.lastViewChange = msg;
    if ("view" in msg && typeof msg.view === "number") this.highestView = Math.max(this.highestView, msg.view);
    let m: PeerMessage = msg;
    if (m.t === "PRE_PREPARE" && m.batch !== null && to === "all") {
      if (this.has("equivocate") && this.equivocate(m)) return;
      if (this.has("badproposal") && this.rng.chance(0.5)) m = this.badProposal(m);
    }
    if (m.t === "NEW_VIEW" && this.has("nvforge") && m.o.length > 0) m = this.forgeNewView(m);
    let extraDelay = m.t === "PRE_PREPARE" && this.has("slow") ? this.rng.int(5, 20) : 0;
    if (m.t === "PRE_PREPARE" && m.batch !== null && this.has("hold")) extraDelay += this.holdDelay(m);
    if (m.t === "PRE_PREPARE" && m.batch !== null && this.has("split")) {
      this.split(to, m, extraDelay);
      return;
    }
    const targets = to === "all" ? this.others() : [to];
    for (const target of targets) {
      if (this.has("omit") && this.rng.chance(0.5)) continue;
      let out: unknown = m;
      if (this.has("byzzfuzz") && this.rng.chance(0.2)) out = this.fuzz(m);
      if (this.has("corrupt") && this.rng.chance(0.3)) out = this.corrupt(m);
      if (this.has("wrongsig") && this.rng.chance(0.2)) out = this.wrongSig(m);
      this.ctx.send(target, out, extraDelay);
      if (this.has("stuff") && isVote(m)) for (let i = 1; i < STUFF_COPIES; i++) this.ctx.send(target, m);
      if (this.has("stale") && this.rng.chance(0.1)) this.sendStaleVersion(target, m);
    }
  }

  /** Whether this replica's core never sees `msg` (a censor drops every FORWARD). */
  refuses(msg: PeerMessage): boolean {
    return !this.honest() && this.has("censor") && msg.t === "FORWARD";
  }

  /** A message delivered to this replica (already passed to its core). */
  incoming(from: ReplicaId, msg: PeerMessage): void {
    this.remember(msg);
    this.observe(msg);
    if (this.honest()) return;
    // Only first-hand votes are reflected, so two stuffers cannot amplify each other.
    if (!isVote(msg) || msg.replica !== from) return;
    // Reflecting a correct replica's own vote back at it, several times, is how an
    // attacker exploits a core that counts messages instead of signers.
    if (this.has("equivocate") || this.has("stuff")) {
      for (let i = 0; i < STUFF_COPIES; i++) this.ctx.send(msg.replica, msg);
    }
    if (this.has("stuff")) for (const r of this.others()) if (r !== from) this.ctx.send(r, msg);
  }

  tick(): void {
    if (this.has("mute") || this.honest()) return;
    if (this.has("stale") && this.history.length > 0 && this.rng.chance(0.1)) {
      this.ctx.send(this.rng.pick(this.others()), this.rng.pick(this.history));
    }
    if (this.has("flood")) this.floodTick();
    if (this.has("nvfuture") && this.rng.chance(0.05)) this.futureNewView();
    if (this.has("accuse")) this.accuse();
    if (this.has("spam")) this.spamTick();
    if (this.has("replay")) this.replayTick();
    if (this.has("fakedecision")) this.fakeDecisionTick();
  }

  /**
   * Reports to every peer that the seqs around the highest it has seen were decided with
   * an empty batch, each under a certificate of unsigned COMMITs naming every member: a
   * certificate anyone can write now that COMMITs are authenticated by the link only. A
   * core that took one peer's word would execute a batch the group never decided.
   */
  private fakeDecisionTick(): void {
    const items = [];
    for (let seq = Math.max(1, this.highestSeq - 2); seq <= this.highestSeq + 2; seq++) {
      const commits: Commit[] = [];
      for (let r = 0; r < this.ctx.n; r++) {
        commits.push({ t: "COMMIT", view: this.highestView, seq, digest: NULL_DIGEST, replica: r, sig: new Uint8Array(64) });
      }
      items.push({ view: this.highestView, seq, batch: [], commits, votes: [] });
    }
    const msg: PeerMessage = { t: "STATE_RESPONSE", kind: "decided", nonce: 0, items, stable: null, lastExecuted: this.highestSeq + 2 };
    for (const r of this.others()) this.ctx.send(r, msg);
  }

  /** What the attacks of the harness need from every message: requests, signed messages, the highest seq. */
  private observe(m: PeerMessage): void {
    if ((m.t === "PRE_PREPARE" || m.t === "PREPARE" || m.t === "COMMIT") && m.seq > this.highestSeq) this.highestSeq = m.seq;
    if (this.has("spam")) {
      const found = m.t === "FORWARD" ? m.requests : m.t === "PRE_PREPARE" && m.batch !== null ? m.batch : [];
      for (const r of found) {
        this.seenRequests.push(r);
        if (this.seenRequests.length > SPAM_REQUESTS_MAX) this.seenRequests.shift();
      }
    }
    if (this.has("replay") && m.t !== "FORWARD" && m.t !== "STATE_REQUEST" && m.t !== "STATE_RESPONSE") {
      this.recorded.push(m);
      if (this.recorded.length > REPLAY_MAX) {
        this.recorded.shift();
        this.replayCursor = Math.max(0, this.replayCursor - 1);
      }
    }
  }

  /**
   * The harness's slow leader, held just under the heartbeat: proposals go out one at a
   * time, each `progressTimeoutTicks - DELAY_POST_MAX - 2` ticks after the one before, so a
   * backup sees a new proposal within its progress timeout however the network delays it
   * (1 to 5 ticks), while the pipeline runs far below what it could.
   */
  private holdDelay(pp: PrePrepare): number {
    const now = this.ctx.now();
    const key = `${pp.view}:${pp.seq}`;
    // A resend goes out with its proposal's slot (at once if that has passed); only a new
    // proposal takes the next slot.
    const slot = this.releases.get(key);
    if (slot !== undefined) return Math.max(0, slot - now);
    const gap = Math.max(1, this.ctx.params.progressTimeoutTicks - DELAY_POST_MAX - 2);
    const at = Math.max(now, this.lastRelease + gap);
    this.lastRelease = at;
    this.releases.set(key, at);
    if (this.releases.size > SPLITS_MAX) this.releases.delete(this.releases.keys().next().value as string);
    return at - now;
  }

  /**
   * The harness's equivocating leader: the real batch to the lowest other replica, the
   * same batch less its last request, signed, to the others (a one-request batch goes to
   * the lowest other replica only), so that no batch can gather a quorum. A resend repeats
   * the same split.
   */
  private split(to: ReplicaId | "all", pp: PrePrepare, extraDelay: number): void {
    const first = this.others()[0] as ReplicaId;
    const key = `${pp.view}:${pp.seq}`;
    let other = this.splits.get(key);
    if (other === undefined) {
      const batch = pp.batch as ClientRequest[];
      other = null;
      if (batch.length >= 2) {
        const shorter = batch.slice(0, -1);
        const header = this.resign<PrePrepare>({ ...pp, batch: null, digest: sha256(batchBytes(shorter)) });
        other = { ...header, batch: shorter };
      }
      this.splits.set(key, other);
      if (this.splits.size > SPLITS_MAX) this.splits.delete(this.splits.keys().next().value as string);
    }
    for (const target of to === "all" ? this.others() : [to]) {
      if (target === first) this.ctx.send(target, pp, extraDelay);
      else if (other !== null) this.ctx.send(target, other, extraDelay);
    }
  }

  /**
   * The harness's flooding replica, round robin to every peer: FORWARDs of real client
   * requests it has seen, STATE_REQUESTs for the whole log window, PREPAREs for the
   * current view with bad signatures, and junk that does not decode.
   */
  private spamTick(): void {
    const { logWindow, pipelineDepth } = this.ctx.params;
    for (const to of this.others()) {
      for (let i = 0; i < SPAM_PER_TICK; i++) {
        const turn = this.spamTurn++;
        switch (turn % 4) {
          case 0: {
            if (this.seenRequests.length === 0) break;
            const start = turn % this.seenRequests.length;
            const requests = [...this.seenRequests.slice(start), ...this.seenRequests.slice(0, start)].slice(0, SPAM_FORWARD_REQUESTS);
            this.ctx.send(to, { t: "FORWARD", requests });
            break;
          }
          case 1:
            this.ctx.send(to, {
              t: "STATE_REQUEST",
              kind: "decided",
              seq: Math.max(1, this.highestSeq - logWindow + 1),
              toSeq: this.highestSeq + logWindow,
              digest: null,
              nonce: this.spamNonce++,
            });
            break;
          case 2:
            this.ctx.send(to, {
              t: "PREPARE",
              view: this.highestView,
              seq: this.highestSeq + 1 + (turn % pipelineDepth),
              digest: sha256(new Uint8Array([turn & 0xff, (turn >> 8) & 0xff])),
              replica: this.ctx.id,
              sig: new Uint8Array(64).fill(turn & 0xff),
            });
            break;
          default:
            this.ctx.send(to, { t: "JUNK", bytes: new Uint8Array(200).fill(turn & 0xff) });
        }
      }
    }
  }

  /** The harness's replayer: recorded signed messages (its own and its peers'), oldest first, to every peer. */
  private replayTick(): void {
    if (this.recorded.length === 0) return;
    for (let i = 0; i < SPAM_PER_TICK; i++) {
      if (this.replayCursor >= this.recorded.length) this.replayCursor = 0;
      const m = this.recorded[this.replayCursor++] as PeerMessage;
      for (const to of this.others()) this.ctx.send(to, m);
    }
  }

  /**
   * One liar's suspicion moves no one (f+1 are needed), and forged evidence of equivocation
   * (a real header of the leader, PREPAREs for another digest with signatures that do not
   * verify) is checked once per view and held against its sender.
   */
  private accuse(): void {
    if (this.rng.chance(0.2)) for (const r of this.others()) this.ctx.send(r, { t: "SUSPECT", view: this.highestView });
    if (!this.rng.chance(0.05)) return;
    const header = [...this.history].reverse().find((m): m is PrePrepare => m.t === "PRE_PREPARE");
    if (header === undefined) return;
    const digest = sha256(new Uint8Array([this.rng.int(0, 255)]));
    const prepares = this.others()
      .filter((r) => r !== header.view % this.ctx.n)
      .map((replica) => ({ t: "PREPARE", view: header.view, seq: header.seq, digest, replica, sig: this.rng.bytes(64) }));
    const evidence = { t: "EVIDENCE", a: { ...header, batch: null }, b: null, prepares };
    for (const r of this.others()) this.ctx.send(r, evidence);
  }

  /**
   * A NEW_VIEW for a view this replica leads, far ahead of any installed one, carrying no
   * VIEW_CHANGEs: no correct replica may move to it, or past the current view because of it.
   */
  private futureNewView(): void {
    const ahead = this.rng.pick([1, 2, 10, 1_000, 2 ** 40]);
    const base = this.highestView + ahead * this.ctx.n;
    const view = base - (base % this.ctx.n) + this.ctx.id;
    const nv = this.resign<NewView>({ t: "NEW_VIEW", view, viewChanges: [], minS: 0, maxS: 0, o: [], sig: NULL_DIGEST });
    for (const r of this.others()) this.ctx.send(r, nv);
  }

  // ---------------------------------------------------------------------------------------

  /**
   * Different batches to two groups of replicas for one (view, seq), each with this
   * replica's COMMIT for that group's digest. Returns false when no distinct valid
   * alternative batch exists.
   */
  private equivocate(pp: PrePrepare): boolean {
    const batch = pp.batch as ClientRequest[];
    const alt = alternativeBatch(batch);
    if (alt === null) return false;
    const altPp = this.resign<PrePrepare>({
      t: "PRE_PREPARE",
      view: pp.view,
      seq: pp.seq,
      digest: sha256(batchBytes(alt)),
      ts: pp.ts,
      batch: null,
      sig: pp.sig,
    });
    const others = this.rng.shuffle(this.others());
    const cut = this.rng.int(1, others.length - 1);
    for (let i = 0; i < others.length; i++) {
      const to = others[i] as ReplicaId;
      const mine = i < cut ? pp : { ...altPp, batch: alt };
      this.ctx.send(to, mine);
      const commit = this.resign<Commit>({
        t: "COMMIT",
        view: pp.view,
        seq: pp.seq,
        digest: mine.digest,
        replica: this.ctx.id,
        sig: pp.sig,
      });
      this.ctx.send(to, commit);
    }
    return true;
  }

  /** A proposal every correct backup must reject: a bad signature, a duplicate or a replay. */
  private badProposal(pp: PrePrepare): PrePrepare {
    const batch = [...(pp.batch as ClientRequest[])];
    const first = batch[0] as ClientRequest;
    const kind = this.rng.int(0, 2);
    if (kind === 0) {
      const sig = first.sig.slice();
      sig[0] = (sig[0] as number) ^ 0xff;
      batch[0] = { ...first, sig };
    } else if (kind === 1) {
      batch.push(first);
    } else {
      const executed = this.ctx.executed();
      if (executed.length === 0) batch.push(first);
      else batch.unshift(this.rng.pick(executed));
    }
    const header = this.resign<PrePrepare>({
      t: "PRE_PREPARE",
      view: pp.view,
      seq: pp.seq,
      digest: sha256(batchBytes(batch)),
      ts: pp.ts,
      batch: null,
      sig: pp.sig,
    });
    return { ...header, batch };
  }

  /** A NEW_VIEW with one O entry replaced by the null digest, re-signed throughout. */
  private forgeNewView(nv: NewView): NewView {
    const o = [...nv.o];
    const i = this.rng.int(0, o.length - 1);
    const old = o[i] as PrePrepare;
    const digest = old.digest.every((b) => b === 0) ? this.rng.bytes(32) : NULL_DIGEST;
    o[i] = this.resign<PrePrepare>({ ...old, digest });
    return this.resign<NewView>({ ...nv, o });
  }

  /** ByzzFuzz small-scope mutation: view or seq moved by one, then signed by this replica. */
  private fuzz(m: PeerMessage): unknown {
    const delta = this.rng.chance(0.5) ? 1 : -1;
    switch (m.t) {
      case "PREPARE":
      case "COMMIT":
        if (this.rng.chance(0.5)) return this.resign({ ...m, view: Math.max(0, m.view + delta) });
        return this.resign({ ...m, seq: Math.max(1, m.seq + delta) });
      case "PRE_PREPARE":
        return this.resign({ ...m, seq: Math.max(1, m.seq + delta) });
      case "CHECKPOINT":
        return this.resign({ ...m, seq: Math.max(1, m.seq + delta) });
      case "VIEW_CHANGE":
        return this.resign({ ...m, newView: Math.max(0, m.newView + delta) });
      default:
        return m;
    }
  }

  /** Flipped bytes or broken fields, not re-signed; or plain junk. */
  private corrupt(m: PeerMessage): unknown {
    const kind = this.rng.int(0, 4);
    const copy = { ...m } as Record<string, unknown>;
    if (kind === 0 && "sig" in m) {
      const sig = m.sig.slice();
      const i = this.rng.int(0, sig.length - 1);
      sig[i] = (sig[i] as number) ^ (1 << this.rng.int(0, 7));
      copy.sig = sig;
    } else if (kind === 1 && "digest" in m && m.digest !== null) {
      const digest = m.digest.slice();
      const i = this.rng.int(0, digest.length - 1);
      digest[i] = (digest[i] as number) ^ 0x80;
      copy.digest = digest;
    } else if (kind === 2) {
      copy[this.rng.pick(Object.keys(copy))] = this.rng.pick<unknown>([-1, "junk", null, 2 ** 60, new Uint8Array(3), []]);
    } else if (kind === 3) {
      return this.rng.pick<unknown>([null, 7, "PREPARE", { t: "PREPARE" }, { t: "NOPE", x: 1 }, [m]]);
    } else if ("view" in m && typeof m.view === "number") {
      copy.view = m.view + 1;
    }
    return copy;
  }

  /** Claims another replica's identity with its own signature, or a random signature. */
  private wrongSig(m: PeerMessage): unknown {
    if ("replica" in m && typeof m.replica === "number") {
      const other = this.rng.pick(this.others());
      return { ...m, replica: other };
    }
    if ("sig" in m) return { ...m, sig: this.rng.bytes(64) };
    return m;
  }

  private sendStaleVersion(to: ReplicaId, m: PeerMessage): void {
    if (isVote(m) && m.view > 0) this.ctx.send(to, this.resign({ ...m, view: m.view - 1 }));
    else if (this.history.length > 0) this.ctx.send(to, this.rng.pick(this.history));
  }

  /** Far-future votes, checkpoints and view changes, all validly signed by this replica. */
  private floodTick(): void {
    const to = this.rng.pick(this.others());
    const view = this.highestView + this.rng.int(0, 2);
    const digest = this.rng.bytes(32);
    this.ctx.send(
      to,
      this.resign({ t: "PREPARE", view, seq: FAR_FUTURE + this.rng.int(0, 1000), digest, replica: this.ctx.id, sig: digest }),
    );
    this.ctx.send(to, this.resign({ t: "CHECKPOINT", seq: FAR_FUTURE * 8, digest, replica: this.ctx.id, sig: digest }));
    const vc = this.lastViewChange;
    if (vc !== null && this.rng.chance(0.2)) {
      this.ctx.send(to, this.resign<ViewChange>({ ...vc, newView: vc.newView + FAR_FUTURE + this.rng.int(0, 1000) }));
    }
  }
}

/** A different valid batch from the same requests: first client's requests moved last, or one dropped. */
export function alternativeBatch(batch: readonly ClientRequest[]): ClientRequest[] | null {
  const firstClient = batch[0]?.client;
  const mine = batch.filter((r) => r.client === firstClient);
  const rest = batch.filter((r) => r.client !== firstClient);
  if (rest.length > 0) return [...rest, ...mine];
  if (batch.length >= 2) return batch.slice(0, batch.length - 1);
  return null;
}
