/**
 * The restart fence of a replica whose store lost records (PROTOCOL.md §2, "Votes sent
 * before their fsync"; cfg.lostRecords). The ordinary fence (restore.ts) covers the
 * installed view of the restored `view` record up to h + L: every vote whose record a
 * crash may have lost is there. A store that dropped damaged rows, or was moved aside and
 * begun anew, proves nothing of the kind: the `view` record may be gone (the core then
 * restarts in view 0), and so may the `stable` records that h came from. Such a replica
 * may have signed a PRE_PREPARE or PREPARE at any seq of any view up to the one it was in,
 * which it cannot name.
 *
 * So it signs none in any view (in crash mode, where only proposals leave early, it
 * proposes in none) until it installs a view that it knows it never voted in before: one
 * whose NEW_VIEW carries a VIEW_CHANGE this replica signed since the restart, built by
 * another replica, for a view above every view it has heard was installed. A correct
 * leader builds one NEW_VIEW per view, so a NEW_VIEW built after the restart is the only
 * one of its view: this replica cannot have voted there before. Until then it takes no
 * part in agreement and follows its peers' decisions (catch-up, as the ordinary fence
 * does); it builds no NEW_VIEW as a new leader either (it could have built one for that
 * view before), so the view change moves past it. A NEW_VIEW a peer hands it that it
 * took no part in (a peer's current view, answered to its VIEW_CHANGE) can be one it
 * voted in before the crash: it installs it and stays fenced.
 *
 * "Heard was installed" is what at least one correct replica shows: the view W peers'
 * normal-case messages show (the rule catch-up already trusts, view-change.ts
 * `catchUpView`), and every NEW_VIEW installed. It is noted in the normal phase only:
 * during the view change it takes part in, its peers' votes in the new view are expected.
 */
import { bytesEqual } from "../../../wire/bytes.ts";
import type { NewView, ViewChange } from "./messages.ts";
import { type CoreState, kthLargest } from "./state.ts";

export interface LostVotes {
  /** The highest view this replica knows was installed by some replica (or its own restored view). */
  heardUpTo: number;
  /** The VIEW_CHANGEs it signed since the restart: view asked for -> signature. */
  readonly ownViewChanges: Map<number, Uint8Array>;
}

/** Fences every view of a core restored from a store that lost records (restore.ts). */
export function fenceLostVotes(state: CoreState): void {
  state.lostVotes = { heardUpTo: state.view, ownViewChanges: new Map() };
}

/**
 * Whether the lost-records fence holds for a vote in `view`. In crash mode only the
 * leader's proposals go out before their record is durable, so only a leader is fenced.
 */
export function lostVotesFenced(state: CoreState, view: number): boolean {
  if (state.lostVotes === null) return false;
  return state.cfg.mode === "bft" || state.leader(view) === state.cfg.id;
}

/** A VIEW_CHANGE this replica signed: a NEW_VIEW carrying it was built after the restart. */
export function noteOwnViewChange(state: CoreState, vc: ViewChange): void {
  state.lostVotes?.ownViewChanges.set(vc.newView, vc.sig);
}

/** Peers showed views in normal-case messages: W of them at a view means a correct replica installed it. */
export function notePeerViews(state: CoreState): void {
  const fence = state.lostVotes;
  if (fence === null || state.phase !== "normal") return;
  fence.heardUpTo = Math.max(fence.heardUpTo, kthLargest(state.peerViews.values(), state.weakQuorumSize));
}

/**
 * A NEW_VIEW built by another replica is being installed: the fence ends if this replica
 * took part in it and no replica is known to have installed this view or a later one
 * before; otherwise the view is one more it may have voted in.
 */
export function settleLostVotes(state: CoreState, m: NewView): void {
  const fence = state.lostVotes;
  if (fence === null) return;
  if (m.view > fence.heardUpTo && carriesOwnViewChange(state, m, fence)) {
    state.lostVotes = null;
    return;
  }
  fence.heardUpTo = Math.max(fence.heardUpTo, m.view);
  for (const view of [...fence.ownViewChanges.keys()]) if (view <= m.view) fence.ownViewChanges.delete(view);
}

function carriesOwnViewChange(state: CoreState, m: NewView, fence: LostVotes): boolean {
  return m.viewChanges.some((vc) => {
    const own = vc.replica === state.cfg.id ? fence.ownViewChanges.get(vc.newView) : undefined;
    return own !== undefined && bytesEqual(own, vc.sig);
  });
}
