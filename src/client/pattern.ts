/**
 * Tag patterns for wildcard subscriptions, with NATS semantics: a pattern is tag
 * segments separated by dots where a segment may also be `*` (exactly one segment) and
 * the last segment may be `>` (one or more further segments). `net.*` matches `net.links`
 * but neither `net` nor `net.links.eth0`; `net.>` matches both of the latter two's
 * children and `net.links.eth0`, never `net` itself.
 */
import { TAG_BYTES_MAX } from "../../wire/types.ts";

const SEGMENT = /^[a-z0-9_-]+$/;

/** Whether `text` holds a wildcard (and so is a pattern, not a tag). */
export function isPattern(text: string): boolean {
  return text.split(".").some((segment) => segment === "*" || segment === ">");
}

/** Why `text` is not a valid pattern, or null. */
export function patternProblem(text: string): string | null {
  if (text.length === 0) return "a pattern must not be empty";
  if (text.length > TAG_BYTES_MAX) return `pattern is ${text.length} bytes; at most ${TAG_BYTES_MAX}`;
  const segments = text.split(".");
  for (const [index, segment] of segments.entries()) {
    if (segment === "*") continue;
    if (segment === ">") {
      if (index !== segments.length - 1) return `pattern ${JSON.stringify(text)}: '>' may only be the last segment`;
      continue;
    }
    if (!SEGMENT.test(segment)) {
      return `pattern ${JSON.stringify(text)} is not dot-separated segments of [a-z0-9_-]+, '*' or a last '>'`;
    }
  }
  return null;
}

/** Whether tag `tag` matches `pattern` (a valid pattern, or a plain tag matching only itself). */
export function matchesPattern(pattern: string, tag: string): boolean {
  const wanted = pattern.split(".");
  const segments = tag.split(".");
  for (const [index, want] of wanted.entries()) {
    if (want === ">") return segments.length > index;
    const segment = segments[index];
    if (segment === undefined) return false;
    if (want !== "*" && want !== segment) return false;
  }
  return segments.length === wanted.length;
}
