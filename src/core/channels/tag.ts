/** Channel tags: dot-separated segments of [a-z0-9_-]+, at most TAG_BYTES_MAX bytes. */
import { TAG_BYTES_MAX } from "./constants.ts";

const TAG_PATTERN = /^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/;

/** True when the tag is well formed. Tags are ASCII, so length equals byte length. */
export function isValidTag(tag: string): boolean {
  return tag.length >= 1 && tag.length <= TAG_BYTES_MAX && TAG_PATTERN.test(tag);
}
