import { UsageError } from "./errors.ts";

/** `--members-digest`: the 64 hex digits `fitb admin members` prints after "digest". */
export function parseMembersDigest(text: string | undefined): Uint8Array | undefined {
  if (text === undefined) return undefined;
  const hex = text.trim().toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) {
    throw new UsageError(
      `--members-digest must be the 64 hex digits fitb admin members prints after "digest", got ${JSON.stringify(text)}`,
    );
  }
  return new Uint8Array(Buffer.from(hex, "hex"));
}
