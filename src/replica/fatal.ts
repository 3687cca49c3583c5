/**
 * When a replica must stop: a state it can no longer trust (a core assertion, a diverged
 * checkpoint, a refused snapshot) or a write it could not make durable. The runtime logs
 * why and hands a FatalError to the handler its embedder chose: `fitb replica` exits with
 * the error's code (systemd then restarts it), a test or another embedder decides for
 * itself. Library code never calls process.exit.
 */
export class FatalError extends Error {
  override readonly name = "FatalError";

  constructor(
    /** The process exit status this stands for (sysexits.h: 70 software, 74 I/O). */
    readonly exitCode: number,
    message: string,
  ) {
    super(message);
  }
}

/** What happens on a FatalError; it must not return (the replica's state is not to be used again). */
export type FatalHandler = (error: FatalError) => never;

/** The default for embedders that give none: the error is thrown, out of whatever callback met it. */
export const throwFatal: FatalHandler = (error) => {
  throw error;
};
