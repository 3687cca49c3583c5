/**
 * Where a worker thread's code is. Run from source (`bun src/cli/main.ts`), a worker is a
 * file beside the others; in the compiled `dist/fitb`, every worker entry is bundled into
 * the executable under `/$bunfs/root/` at its path below `src/` (package.json's build
 * lists each entry and passes `--root src`). A new worker entry must be added to that list.
 */

/** Whether this code runs from the compiled executable. */
const COMPILED = import.meta.url.includes("/$bunfs/");

/** The specifier to hand `new Worker` for an entry at `fromSrc` (a path below src/, e.g. "threads/verify-worker.ts"). */
export function workerEntry(fromSrc: string): string {
  if (COMPILED) return `/$bunfs/root/${fromSrc}`;
  return new URL(`../${fromSrc}`, import.meta.url).href;
}
