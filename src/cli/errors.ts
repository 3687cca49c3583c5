/**
 * The errors a command may throw, and how each is reported:
 *   UsageError        bad invocation: one line, the command's usage, exit 2
 *   CommandError      the command could not do its job: the message, exit 1
 *   anything listed in USER_ERROR_TYPES: reported like CommandError
 *   anything else     an internal error: one line, exit 1, stack with FITB_DEBUG=1
 */
import { ClusterConfigError } from "../config/cluster.ts";
import { ClusterInitError } from "../config/init.ts";
import { KeyFileError, KeyFormatError } from "../crypto/keys.ts";

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/** The command line itself is wrong (unknown flag, missing value, bad number). */
export class UsageError extends Error {
  override name = "UsageError";
}

/** The command was invoked correctly but cannot do its job; the message says why. */
export class CommandError extends Error {
  override name = "CommandError";
}

/**
 * Library errors whose messages are written for the operator (they name the file or
 * field), so they are shown as they are, without "internal error" or a stack. A
 * command module that throws its own such errors adds their class here.
 */
const USER_ERROR_TYPES: readonly (abstract new (...args: never[]) => Error)[] = [
  CommandError,
  KeyFileError,
  KeyFormatError,
  ClusterConfigError,
  ClusterInitError,
];

export function isUserError(error: unknown): error is Error {
  return USER_ERROR_TYPES.some((type) => error instanceof type);
}
