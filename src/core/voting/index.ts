/** Client-side voting: reply quorums per CLASS, and delivery voting per subscription. */
export * from "./quorum.ts";
export * from "./reply-voter.ts";
export * from "./delivery-voter.ts";
export * from "./group-events.ts";
