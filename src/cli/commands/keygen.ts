/**
 * `fitb keygen --out FILE [--force]`: writes an ed25519 key pair and prints the
 * public key, so a script can capture it: `KEY=$(fitb keygen --out probe.key)`.
 */
import { statSync } from "node:fs";
import { join } from "node:path";
import { formatPublicKey, KeyFileError, publicKeyPathFor, SECRET_KEY_FILE_MODE, SigningKey, writeKeyPairFiles } from "../../crypto/keys.ts";
import type { ParsedArgs } from "../args.ts";
import type { Command, CommandIo } from "../command.ts";
import { CommandError, EXIT_OK, UsageError } from "../errors.ts";

/** The file name suggested inside a directory given as --out. */
const EXAMPLE_KEY_FILE_NAME = "probe.key";

export const keygenCommand: Command = {
  path: ["keygen"],
  summary: "Write a new ed25519 key pair (FILE and FILE.pub)",
  description: [
    "Writes a new ed25519 secret key to FILE (mode 0600) and its public key to FILE.pub,",
    "then prints the public key (ed25519:...) on standard output.",
    "Put the public key in the cluster file; keep FILE on the one host that uses it.",
  ],
  flags: [
    {
      name: "out",
      kind: "string",
      valueName: "FILE",
      required: true,
      description: "Where to write the secret key; the public key goes to FILE.pub",
    },
    { name: "force", kind: "boolean", description: "Replace FILE and FILE.pub if they exist" },
  ],
  positionals: [],
  examples: ["fitb keygen --out /etc/fitb/probe.key"],
  run: runKeygen,
};

function runKeygen(args: ParsedArgs, io: CommandIo): number {
  const path = args.requiredString("out");
  refuseDirectory(path);
  const key = SigningKey.generate();
  try {
    writeKeyPairFiles(path, key, { overwrite: args.boolean("force") });
  } catch (error) {
    if (error instanceof KeyFileError && error.reason === "exists") {
      throw new CommandError(`${error.path} already exists; pass --force to replace it (the old key is lost)`);
    }
    throw error;
  }
  io.err(`wrote ${path} (secret, mode ${SECRET_KEY_FILE_MODE.toString(8).padStart(4, "0")}) and ${publicKeyPathFor(path)}`);
  io.out(formatPublicKey(key.publicKey));
  return EXIT_OK;
}

/** --out names the file to write; a directory there is refused before anything is written (--force would not help). */
function refuseDirectory(path: string): void {
  if (isDirectory(path)) {
    throw new UsageError(
      `--out ${path} is a directory; --out takes the secret key file to write, e.g. --out ${join(path, EXAMPLE_KEY_FILE_NAME)}`,
    );
  }
  const publicPath = publicKeyPathFor(path);
  if (isDirectory(publicPath)) {
    throw new UsageError(`${publicPath} is a directory, where --out ${path} puts the public key; choose another --out or move it`);
  }
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}
