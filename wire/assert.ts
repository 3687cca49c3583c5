/**
 * Assertions that stay on in production (src/README.md §9, rule 8): a broken invariant
 * stops the process with the invariant named, instead of letting it go on wrong. One
 * condition per call, so the message says which one failed. Importable from every layer
 * (it imports nothing).
 */

export class AssertionFailure extends Error {
  override name = "AssertionFailure";
}

export function assert(condition: boolean, what: string): asserts condition {
  if (!condition) throw new AssertionFailure(what);
}
