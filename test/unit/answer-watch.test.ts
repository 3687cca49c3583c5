/**
 * The answer watch (src/threads/answer-watch.ts): a message left unanswered past the
 * deadline is reported once; answered ones never are; and a stall of the owner's own event
 * loop starts the waits again instead of blaming the thread for it.
 */
import { afterEach, expect, test } from "bun:test";
import { AnswerWatch } from "../../src/threads/answer-watch.ts";
import { waitFor } from "../helpers/wait.ts";

const DEADLINE_MS = 400;
const watches: AnswerWatch[] = [];
afterEach(() => {
  for (const watch of watches.splice(0)) watch.stop();
});

function watch(onOverdue: (waitedMs: number) => void): AnswerWatch {
  const w = new AnswerWatch({ deadlineMs: DEADLINE_MS, onOverdue });
  watches.push(w);
  return w;
}

/** Holds this thread's event loop for `ms`, as a long synchronous task would. */
function holdLoop(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // busy: no timer or message can run meanwhile
  }
}

test("the oldest unanswered message past the deadline is reported once, with how long it waited", async () => {
  const reports: number[] = [];
  const w = watch((waited) => reports.push(waited));
  w.sent(1);
  w.sent(2);
  w.answered(2);
  await waitFor("the overdue report", () => reports.length > 0, 10_000);
  expect(reports[0]).toBeGreaterThan(DEADLINE_MS);
  // Stopped: later messages are not watched.
  w.sent(3);
  expect(w.unanswered).toBe(0);
  expect(reports.length).toBe(1);
});

test("a message answered in time is never reported, however long the watch runs after", async () => {
  const reports: number[] = [];
  const w = watch((waited) => reports.push(waited));
  w.sent(1);
  w.answered(1);
  // A second message, never answered, is the positive signal that the watch looked.
  w.sent(2);
  await waitFor("the unanswered one's report", () => reports.length > 0, 10_000);
  expect(reports.length).toBe(1);
});

test("after the owner's loop was held past the deadline, a wait counts only from the end of the hold", async () => {
  let reportedAt = 0;
  const w = watch(() => {
    reportedAt = performance.now();
  });
  w.sent(1);
  holdLoop(DEADLINE_MS * 3);
  const holdEnded = performance.now();
  await waitFor("the overdue report", () => reportedAt > 0, 10_000);
  // Without the rule it would be reported at the first look after the hold, at once.
  expect(reportedAt - holdEnded).toBeGreaterThanOrEqual(DEADLINE_MS);
});

test("a thread that keeps answering, however far behind, is not reported; once it answers nothing past the deadline, it is", async () => {
  let reportedAt = 0;
  const w = watch(() => {
    reportedAt = performance.now();
  });
  const started = performance.now();
  let next = 1;
  let oldest = 1;
  let lastAnswerAt = 0;
  // Sent twice as often as answered, oldest first: each message waits longer than the one before.
  const sender = setInterval(() => w.sent(next++), 10);
  const answerer = setInterval(() => {
    if (oldest >= next) return;
    w.answered(oldest++);
    lastAnswerAt = performance.now();
  }, 20);
  try {
    // Three deadlines of answers: by then the oldest message has waited past the deadline.
    await waitFor("three deadlines of answers", () => reportedAt > 0 || lastAnswerAt - started > 3 * DEADLINE_MS, 20_000);
    clearInterval(answerer);
    await waitFor("the report once the thread is silent", () => reportedAt > 0, 20_000);
  } finally {
    clearInterval(sender);
    clearInterval(answerer);
  }
  expect(reportedAt - lastAnswerAt).toBeGreaterThanOrEqual(DEADLINE_MS);
});
