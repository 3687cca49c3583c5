/**
 * The errors the client library reports. Each carries a code from the protocol's closed
 * list (wire/types.ts ERROR_CODES), so that a gateway can answer `-ERR <code> <reason>`
 * without a lookup table, and a message written for the operator: one line, naming the
 * replica, the address or the quorum that was missing.
 */
import type { ErrorCode } from "../../wire/types.ts";

/** The base of every error the client library throws or rejects with. */
export class ClientError extends Error {
  override name = "ClientError";
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** A replica could not be reached: the TCP connection failed or dropped before the session was up. */
export class ReplicaUnreachableError extends ClientError {
  override name = "ReplicaUnreachableError";
  constructor(
    readonly replica: number,
    readonly address: string,
    readonly detail: string,
  ) {
    super("TIMEOUT", `replica ${replica} (${address}) unreachable: ${detail}`);
  }
}

/**
 * The session handshake failed: the replica presented a key other than the cluster
 * file's, its signature did not verify, or it refused ours. The connection is dropped
 * before anything is sent, because a replica that cannot prove who it is may be anyone.
 */
export class HandshakeError extends ClientError {
  override name = "HandshakeError";
  constructor(
    readonly replica: number,
    readonly address: string,
    code: ErrorCode,
    readonly detail: string,
  ) {
    super(code, `replica ${replica} (${address}) handshake failed: ${detail}`);
  }
}

/**
 * Not enough replicas answered (or agreed) within the time allowed. The request may still
 * be stored or ordered by replicas that did not answer in time, and its numbers may have
 * been used. Its code is TIMEOUT, unless replicas kept refusing it "not now" until the
 * deadline (RetriedRefusalError).
 */
export class NoQuorumError extends ClientError {
  override name = "NoQuorumError";
  constructor(message: string, code: ErrorCode = "TIMEOUT") {
    super(code, message);
  }
}

/** The "not now" refusals a request can be retried for until its deadline and report as its code (RetriedRefusalError). */
export type RetriedRefusalCode = "RATE_LIMITED" | "OVERLOADED";

/**
 * A request that did not reach its quorum by its deadline because replicas kept refusing
 * it "not now" (RATE_LIMITED: over a rate limit; OVERLOADED: shedding load): retried
 * refusals, not votes (request-tracker.ts). Its code is theirs, so that `-ERR RATE_LIMITED
 * ...` says what kept it out rather than `TIMEOUT`; `replicas` are those whose last answer
 * it was, `reason` the last one's reason. Still a NoQuorumError: replicas that did not
 * refuse it may have stored it.
 */
export class RetriedRefusalError extends NoQuorumError {
  override name = "RetriedRefusalError";
  constructor(
    code: RetriedRefusalCode,
    readonly replicas: readonly number[],
    readonly reason: string,
    message: string,
  ) {
    super(message, code);
  }
}

/** A quorum of replicas refused the request; `code` and `reason` are theirs. */
export class RequestRejectedError extends ClientError {
  override name = "RequestRejectedError";
  constructor(
    code: ErrorCode,
    readonly reason: string,
  ) {
    super(code, reason);
  }
}

/** The input is invalid before anything is sent (bad tag, oversized event, too many events). */
export class InvalidInputError extends ClientError {
  override name = "InvalidInputError";
}

/** A bounded queue is full; the caller should slow down or wait for room. */
export class QueueFullError extends ClientError {
  override name = "QueueFullError";
  constructor(message: string) {
    super("OVERLOADED", message);
  }
}

/** The client (or the publisher or subscription) was closed while the operation was pending. */
export class ClientClosedError extends ClientError {
  override name = "ClientClosedError";
  constructor(message = "the client is closed") {
    super("NOT_READY", message);
  }
}

/** A subscription ended for a reason a quorum of replicas agrees on (unknown channel, unauthorized, ...). */
export class SubscriptionEndedError extends ClientError {
  override name = "SubscriptionEndedError";
  constructor(
    code: ErrorCode,
    readonly endCode: string,
    message: string,
  ) {
    super(code, message);
  }
}

/** The reason text of any thrown value, on one line. */
export function describeError(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.replace(/\s*\n\s*/g, "; ");
}
