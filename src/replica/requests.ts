/**
 * Request admission on the replica: decoding a REQUEST frame's signed body, checking the
 * client's signature, and naming the request's sequence space.
 *
 * A client's sequence numbers are per space: one space per (client key, tag) for
 * publishes and one per client key for admin commands. Separate spaces keep a publisher
 * of several channels, some ordered and some not, from leaving gaps in any one ordered
 * stream (the ordering core executes each space's requests with no gap).
 */
import { verify } from "../crypto/ed25519.ts";
import { toHex } from "../crypto/encoding.ts";
import { decodeRequestBody, type Request, type SignedRequest } from "../../wire/schemas.ts";
import { requestSigningInput } from "../../wire/session.ts";

/** The space name of admin commands; '!' never appears in a tag. */
export const ADMIN_SPACE = "!admin";

export function spaceOf(clientHex: string, request: Request): string {
  return request.op.t === "admin" ? `${clientHex}:${ADMIN_SPACE}` : `${clientHex}:${request.op.tag}`;
}

export type Admission =
  | { readonly ok: true; readonly request: Request; readonly clientHex: string; readonly space: string }
  | { readonly ok: false; readonly code: "BAD_REQUEST" | "BAD_SIGNATURE" | "BAD_VERSION"; readonly reason: string };

/** Decodes and verifies a signed request. Pure apart from the signature check. */
export function admitRequest(signed: SignedRequest): Admission {
  const decoded = decodeRequestBody(signed.body);
  if (!decoded.ok) {
    const code = decoded.error.kind === "bad-version" ? "BAD_VERSION" : "BAD_REQUEST";
    return { ok: false, code, reason: decoded.error.reason };
  }
  const request = decoded.request;
  if (!verify(request.client, requestSigningInput(signed.body), signed.sig)) {
    return { ok: false, code: "BAD_SIGNATURE", reason: "the request signature does not verify for its client key" };
  }
  const clientHex = toHex(request.client);
  return { ok: true, request, clientHex, space: spaceOf(clientHex, request) };
}
