/**
 * Waiting for standard output and standard error to be written out before the process
 * exits. `stream.write("", callback)` is not enough in Bun: its callback comes while
 * earlier writes still wait for a slow reader of a pipe, and `process.exit` then drops
 * them (`fitb sub --count N | slow-reader` lost everything past the pipe's 64 KiB). Ending
 * the stream calls back only once everything written before has left the process.
 */

/** Ends `stream` and resolves once everything written to it has been handed to the system (or it failed). */
export function flushed(stream: NodeJS.WriteStream): Promise<void> {
  return new Promise((resolve) => {
    stream.once("error", () => resolve());
    stream.end(() => resolve());
  });
}
