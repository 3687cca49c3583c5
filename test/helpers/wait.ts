/**
 * The one bounded wait the tests use: poll a condition until it holds or a deadline
 * passes. The deadline only bounds a failure (a passing run waits for the condition, never
 * for the clock), so it is generous; the error names what was awaited and, when asked,
 * what was last observed.
 */

/** Default bound on a wait: reached only when a test fails. */
export const WAIT_MS_DEFAULT = 20_000;
/** First and longest pause between two polls: quick for in-process conditions, gentle on a status endpoint. */
const POLL_MS_FIRST = 5;
const POLL_MS_MAX = 50;

/**
 * Polls `check` until it returns true or `timeoutMs` passes (it is always asked at least
 * once, and once more after the deadline). Polls start 5 ms apart and slow to 50 ms. On
 * timeout the error names `what` and, when `lastSeen` is given, what was last observed.
 */
export async function waitFor(
  what: string | (() => string),
  check: () => boolean | Promise<boolean>,
  timeoutMs = WAIT_MS_DEFAULT,
  lastSeen?: () => string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let pauseMs = POLL_MS_FIRST;
  for (;;) {
    if (await check()) return;
    if (Date.now() >= deadline) break;
    await Bun.sleep(pauseMs);
    pauseMs = Math.min(POLL_MS_MAX, pauseMs * 2);
  }
  const name = typeof what === "string" ? what : what();
  const seen = lastSeen === undefined ? "" : `; last seen: ${lastSeen()}`;
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${name}${seen}`);
}
