/**
 * The fitb wire protocol: canonical CBOR, framing, frame schemas and the bytes that
 * signatures and MACs cover. The specification in prose is PROTOCOL.md beside this file.
 */
export * from "./canonical.ts";
export * from "./frame.ts";
export * from "./schemas.ts";
export * from "./session.ts";
export * from "./types.ts";
