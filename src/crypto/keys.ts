/**
 * ed25519 keys: generation, the text forms, and key files.
 *
 * Text forms (the shared contract):
 *   public key        `ed25519:<base64url, no padding, of the 32 raw bytes>` (51 chars)
 *   secret key file   one line `fitb-ed25519-secret:<base64url, no padding, of the 32-byte seed>`
 *   public key file   one line, the public key text form
 * The seed is the RFC 8032 secret key; the public key is derived from it, so the
 * secret file alone is enough to run, and `FILE.pub` exists for the operator to copy
 * into the cluster file.
 */
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync, chmodSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { createPrivateKey, createPublicKey, randomBytes, type KeyObject } from "node:crypto";
import { Point } from "@noble/ed25519";
import { asUint8Array, bytesEqual, fromBase64urlStrict, toBase64url, toHex } from "./encoding.ts";

export const ED25519_PUBLIC_KEY_BYTES = 32;
export const ED25519_SEED_BYTES = 32;
export const ED25519_SIGNATURE_BYTES = 64;
export const PUBLIC_KEY_PREFIX = "ed25519:";
/** base64url of 32 bytes without padding is always 43 characters. */
export const KEY_BASE64URL_CHARS = 43;
export const SECRET_KEY_PREFIX = "fitb-ed25519-secret:";
export const PUBLIC_KEY_FILE_SUFFIX = ".pub";
/** Owner read/write only: the secret key file must not be readable by anyone else. */
export const SECRET_KEY_FILE_MODE = 0o600;
export const PUBLIC_KEY_FILE_MODE = 0o644;
/** Permission bits for group and others; a secret key file with any of them set is refused. */
const GROUP_OTHER_PERMISSION_BITS = 0o077;
/** Key files are one short line; anything bigger is not a key file and is not read whole. */
export const KEY_FILE_BYTES_MAX = 4096;

/** The expected public key form, quoted in every error about a public key. */
export const PUBLIC_KEY_FORM = `"${PUBLIC_KEY_PREFIX}<${KEY_BASE64URL_CHARS} base64url chars>"`;
const SECRET_KEY_FORM = `one line "${SECRET_KEY_PREFIX}<${KEY_BASE64URL_CHARS} base64url chars>"`;

/** DER prefixes that wrap a raw 32-byte ed25519 key for node:crypto (RFC 8410). */
export const SPKI_ED25519_PREFIX = Uint8Array.from([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]);
const PKCS8_ED25519_PREFIX = Uint8Array.from([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
]);

/** A malformed key string or key bytes. */
export class KeyFormatError extends Error {
  override name = "KeyFormatError";
}

/** A key file that cannot be read, parsed or written; the message names the file. */
export class KeyFileError extends Error {
  override name = "KeyFileError";
  constructor(
    readonly path: string,
    readonly reason: "exists" | "io" | "format" | "permissions",
    message: string,
  ) {
    super(message);
  }
}

/**
 * An ed25519 signing key. The native key object is built once here because
 * building it costs more than a hash; signing is a hot path.
 */
export class SigningKey {
  readonly publicKey: Uint8Array;
  /** The node:crypto handle used by `sign` in ed25519.ts. */
  readonly native: KeyObject;
  readonly #seed: Uint8Array;

  private constructor(seed: Uint8Array) {
    this.#seed = Uint8Array.from(seed);
    this.native = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]), format: "der", type: "pkcs8" });
    const spki = createPublicKey(this.native).export({ format: "der", type: "spki" });
    this.publicKey = Uint8Array.from(spki.subarray(SPKI_ED25519_PREFIX.length));
  }

  /** A fresh key from the operating system's CSPRNG. */
  static generate(): SigningKey {
    return new SigningKey(asUint8Array(randomBytes(ED25519_SEED_BYTES)));
  }

  /** The key for a 32-byte RFC 8032 seed. */
  static fromSeed(seed: Uint8Array): SigningKey {
    if (seed.byteLength !== ED25519_SEED_BYTES) {
      throw new KeyFormatError(`ed25519 seed must be ${ED25519_SEED_BYTES} bytes, got ${seed.byteLength}`);
    }
    return new SigningKey(seed);
  }

  /** A copy of the seed, for writing the key file. */
  exportSeed(): Uint8Array {
    return Uint8Array.from(this.#seed);
  }

  /** The public key in its `ed25519:...` text form. */
  get publicKeyText(): string {
    return formatPublicKey(this.publicKey);
  }

  /** Keeps the seed out of JSON logs by accident. */
  toJSON(): { publicKey: string } {
    return { publicKey: this.publicKeyText };
  }
}

/** The `ed25519:...` text form of a 32-byte public key. */
export function formatPublicKey(publicKey: Uint8Array): string {
  if (publicKey.byteLength !== ED25519_PUBLIC_KEY_BYTES) {
    throw new KeyFormatError(`ed25519 public key must be ${ED25519_PUBLIC_KEY_BYTES} bytes, got ${publicKey.byteLength}`);
  }
  return PUBLIC_KEY_PREFIX + toBase64url(publicKey);
}

/**
 * The string form of a public key used as a Map key (lowercase hex of the 32 bytes),
 * as the shared data model defines ClientId / ReplicaKey.
 */
export function publicKeyId(publicKey: Uint8Array): string {
  return toHex(publicKey);
}

export type PublicKeyParse = { ok: true; key: Uint8Array } | { ok: false; reason: string };

/**
 * Parses the `ed25519:...` form without throwing. Besides the text syntax it checks
 * that the bytes are a canonical encoding of a curve point and not a small-order
 * point: such keys verify forged signatures under some rules, and no honest key
 * generator produces them, so they are configuration mistakes or attacks.
 */
export function tryParsePublicKey(text: string): PublicKeyParse {
  if (!text.startsWith(PUBLIC_KEY_PREFIX)) {
    return { ok: false, reason: `expected ${PUBLIC_KEY_FORM}, the text does not start with "${PUBLIC_KEY_PREFIX}"` };
  }
  const encoded = text.slice(PUBLIC_KEY_PREFIX.length);
  if (encoded.length !== KEY_BASE64URL_CHARS) {
    return { ok: false, reason: `expected ${PUBLIC_KEY_FORM}, got ${encoded.length} chars after "${PUBLIC_KEY_PREFIX}"` };
  }
  const key = fromBase64urlStrict(encoded);
  if (key === null) {
    return { ok: false, reason: `expected ${PUBLIC_KEY_FORM}, the text is not canonical base64url` };
  }
  const pointProblem = checkPublicKeyPoint(key);
  if (pointProblem !== null) return { ok: false, reason: pointProblem };
  return { ok: true, key };
}

/** Parses the `ed25519:...` form; throws KeyFormatError with the reason. */
export function parsePublicKey(text: string): Uint8Array {
  const parsed = tryParsePublicKey(text);
  if (!parsed.ok) throw new KeyFormatError(parsed.reason);
  return parsed.key;
}

/** Returns why the 32 bytes are not a usable ed25519 public key, or null if they are. */
function checkPublicKeyPoint(key: Uint8Array): string | null {
  let point: Point;
  try {
    // zip215 = false: strict RFC 8032 decoding, which rejects non-canonical encodings.
    point = Point.fromBytes(key, false);
  } catch {
    return "not a valid ed25519 public key (the bytes do not encode a curve point)";
  }
  if (point.isSmallOrder()) return "not a usable ed25519 public key (a small-order point)";
  return null;
}

/** The one-line content of a secret key file. */
export function formatSecretKeyFile(key: SigningKey): string {
  return `${SECRET_KEY_PREFIX}${toBase64url(key.exportSeed())}\n`;
}

/** The one-line content of a public key file. */
export function formatPublicKeyFile(publicKey: Uint8Array): string {
  return `${formatPublicKey(publicKey)}\n`;
}

/** Parses the content of a secret key file; `sourceName` is used in the error. */
export function parseSecretKeyFile(text: string, sourceName: string): SigningKey {
  const line = singleLine(text);
  if (line === null || !line.startsWith(SECRET_KEY_PREFIX)) {
    throw new KeyFileError(sourceName, "format", `${sourceName}: not a fitb secret key file (expected ${SECRET_KEY_FORM})`);
  }
  const seed = fromBase64urlStrict(line.slice(SECRET_KEY_PREFIX.length));
  if (seed === null || seed.byteLength !== ED25519_SEED_BYTES) {
    throw new KeyFileError(sourceName, "format", `${sourceName}: malformed secret key (expected ${SECRET_KEY_FORM})`);
  }
  return SigningKey.fromSeed(seed);
}

/** Parses the content of a public key file; `sourceName` is used in the error. */
export function parsePublicKeyFile(text: string, sourceName: string): Uint8Array {
  const line = singleLine(text);
  if (line === null) {
    throw new KeyFileError(sourceName, "format", `${sourceName}: expected one line ${PUBLIC_KEY_FORM}`);
  }
  const parsed = tryParsePublicKey(line);
  if (!parsed.ok) throw new KeyFileError(sourceName, "format", `${sourceName}: ${parsed.reason}`);
  return parsed.key;
}

/** The text of a one-line file without its line ending, or null if it has more lines. */
function singleLine(text: string): string | null {
  const trimmed = text.replace(/\r?\n$/, "");
  if (/[\r\n]/.test(trimmed)) return null;
  return trimmed.trim();
}

/** The path of the public key file that accompanies a secret key file. */
export function publicKeyPathFor(secretPath: string): string {
  return secretPath + PUBLIC_KEY_FILE_SUFFIX;
}

export interface WriteKeyPairOptions {
  /** Replace existing files; without it an existing file is an error. */
  readonly overwrite: boolean;
}

/**
 * Writes `path` (the secret, mode 0600) and `path.pub`. Each file is written to a
 * temporary name, flushed and renamed, so a crash never leaves a half-written key
 * under the real name.
 */
export function writeKeyPairFiles(path: string, key: SigningKey, options: WriteKeyPairOptions): void {
  const publicPath = publicKeyPathFor(path);
  // Not made here: a mistyped directory would put a secret where nobody looks for it.
  const dir = dirname(path);
  if (!existsSync(dir))
    throw new KeyFileError(path, "io", `cannot write ${path}: its directory ${dir} does not exist (make it first: mkdir -m 700 ${dir})`);
  if (!options.overwrite) {
    for (const target of [path, publicPath]) {
      if (existsSync(target)) throw new KeyFileError(target, "exists", `${target} already exists`);
    }
  }
  writeFileAtomically(path, formatSecretKeyFile(key), SECRET_KEY_FILE_MODE);
  writeFileAtomically(publicPath, formatPublicKeyFile(key.publicKey), PUBLIC_KEY_FILE_MODE);
}

function writeFileAtomically(path: string, content: string, mode: number): void {
  const temporary = join(dirname(path), `.${basename(path)}.${toHex(asUint8Array(randomBytes(6)))}.tmp`);
  try {
    // "wx": the temporary name must be new, so nobody can pre-create it with looser rights.
    const fd = openSync(temporary, "wx", mode);
    try {
      // The process umask may have cleared bits of `mode`; set it exactly.
      chmodSync(temporary, mode);
      writeSync(fd, content);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temporary, path);
  } catch (error) {
    if (existsSync(temporary)) unlinkSync(temporary);
    throw new KeyFileError(path, "io", `cannot write ${path}: ${describeIoError(error)}`);
  }
}

export interface LoadedSigningKey {
  readonly key: SigningKey;
  /** Problems worth telling the operator that do not stop the key from being used. */
  readonly warnings: readonly string[];
}

/**
 * Loads a secret key file. What the file is comes first: a public key file or a file
 * that is no secret key is refused as such (a chmod would not make it one). Then a file
 * that group or others may access is refused: a replica key another local user could
 * read lets that user speak as the replica (one of the f it may lose), so a replica,
 * relay or client does not start with it; the message says the chmod that fixes it.
 * A `.pub` beside it that names a different key is a warning, since the secret is
 * authoritative.
 */
export function loadSigningKeyFile(path: string): LoadedSigningKey {
  const warnings: string[] = [];
  const mode = statKeyFile(path);
  const text = readKeyFile(path);
  refuseOtherKindOfFile(path, text);
  const key = parseSecretKeyFile(text, path);
  if ((mode & GROUP_OTHER_PERMISSION_BITS) !== 0) {
    const octal = (mode & 0o777).toString(8).padStart(3, "0");
    throw new KeyFileError(
      path,
      "permissions",
      `${path} is accessible by group or others (mode ${octal}); a secret key must be the owner's only: run chmod 600 ${path}`,
    );
  }
  const publicPath = publicKeyPathFor(path);
  if (existsSync(publicPath)) {
    const mismatch = publicFileMismatch(publicPath, key.publicKey);
    if (mismatch !== null) warnings.push(mismatch);
  }
  return { key, warnings };
}

/** A line every cluster file has (config/cluster.ts), so a cluster file given as a key is named as such. */
const CLUSTER_FILE_MARK = "[[replicas]]";

/**
 * Throws when `text` is a file often given by mistake where a secret key is wanted: a
 * public key (`ed25519:...`), naming the secret key file beside it when `path` is
 * `SECRET.pub` and SECRET exists; or a cluster file.
 */
function refuseOtherKindOfFile(path: string, text: string): void {
  if (text.includes(CLUSTER_FILE_MARK)) {
    throw new KeyFileError(path, "format", `${path} is a cluster file, not a secret key; --config takes it, --key the secret key file`);
  }
  if (!text.trimStart().startsWith(PUBLIC_KEY_PREFIX)) return;
  const secretPath = path.endsWith(PUBLIC_KEY_FILE_SUFFIX) ? path.slice(0, -PUBLIC_KEY_FILE_SUFFIX.length) : null;
  const which =
    secretPath !== null && secretPath !== "" && existsSync(secretPath)
      ? secretPath
      : `the file that starts "${SECRET_KEY_PREFIX}" (FILE for the FILE.pub that fitb keygen wrote)`;
  throw new KeyFileError(path, "format", `${path} is a public key file; --key takes the secret key, ${which}`);
}

function publicFileMismatch(publicPath: string, expected: Uint8Array): string | null {
  try {
    const listed = parsePublicKeyFile(readKeyFile(publicPath), publicPath);
    if (bytesEqual(listed, expected)) return null;
    return `${publicPath} does not match its secret key (the secret key's public key is ${formatPublicKey(expected)})`;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

/** Loads a public key file (`ed25519:...` on one line). */
export function loadPublicKeyFile(path: string): Uint8Array {
  statKeyFile(path);
  return parsePublicKeyFile(readKeyFile(path), path);
}

/** Returns the file's mode bits after checking it is a regular file of sane size. */
function statKeyFile(path: string): number {
  let stats: ReturnType<typeof statSync>;
  try {
    stats = statSync(path);
  } catch (error) {
    throw new KeyFileError(path, "io", `cannot read key file ${path}: ${describeIoError(error)}`);
  }
  if (!stats.isFile()) throw new KeyFileError(path, "format", `${path} is not a regular file`);
  if (stats.size > KEY_FILE_BYTES_MAX) {
    throw new KeyFileError(path, "format", `${path} is ${stats.size} bytes, too large for a key file (max ${KEY_FILE_BYTES_MAX})`);
  }
  return stats.mode;
}

function readKeyFile(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    throw new KeyFileError(path, "io", `cannot read key file ${path}: ${describeIoError(error)}`);
  }
}

/** "ENOENT (no such file or directory)"-style text without the stack. */
export function describeIoError(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return "no such file or directory";
    if (code === "EACCES" || code === "EPERM") return "permission denied";
    if (code === "EISDIR") return "is a directory";
    if (code === "ENOTDIR") return "a parent is not a directory";
    if (code === "EEXIST") return "already exists";
    return code ?? error.message;
  }
  return String(error);
}
