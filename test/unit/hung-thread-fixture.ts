/**
 * A thread that takes every message and answers none, as one stuck in an endless loop or a
 * native deadlock would (verify-pool.test.ts, ordering-thread.test.ts: the answer watch).
 */
declare const self: Worker;
self.onmessage = () => {};
