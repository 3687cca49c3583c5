import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromHex, toBase64url } from "../../src/crypto/encoding.ts";
import {
  formatPublicKey,
  formatSecretKeyFile,
  KeyFileError,
  KeyFormatError,
  loadPublicKeyFile,
  loadSigningKeyFile,
  parsePublicKey,
  parseSecretKeyFile,
  publicKeyId,
  SigningKey,
  tryParsePublicKey,
  writeKeyPairFiles,
} from "../../src/crypto/keys.ts";

const directory = mkdtempSync(join(tmpdir(), "fitb-keys-"));
afterAll(() => rmSync(directory, { recursive: true, force: true }));

// RFC 8032 §7.1, test 1.
const RFC_SEED = fromHex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
const RFC_PUBLIC = fromHex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");

describe("SigningKey", () => {
  test("derives the RFC 8032 public key from its seed", () => {
    expect(SigningKey.fromSeed(RFC_SEED).publicKey).toEqual(RFC_PUBLIC);
  });

  test("generated keys differ and round trip through their seed", () => {
    const a = SigningKey.generate();
    const b = SigningKey.generate();
    expect(a.publicKey).not.toEqual(b.publicKey);
    expect(SigningKey.fromSeed(a.exportSeed()).publicKey).toEqual(a.publicKey);
  });

  test("rejects a seed of the wrong length", () => {
    expect(() => SigningKey.fromSeed(new Uint8Array(31))).toThrow(KeyFormatError);
  });

  test("does not put the seed into JSON", () => {
    const key = SigningKey.fromSeed(RFC_SEED);
    const json = JSON.stringify({ key });
    expect(json).toContain(formatPublicKey(RFC_PUBLIC));
    expect(json).not.toContain(toBase64url(RFC_SEED));
  });
});

describe("public key text form", () => {
  test("formats as ed25519:<43 base64url chars> and parses back", () => {
    const text = formatPublicKey(RFC_PUBLIC);
    expect(text).toBe("ed25519:11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
    expect(parsePublicKey(text)).toEqual(RFC_PUBLIC);
  });

  test("the map-key form is lowercase hex", () => {
    expect(publicKeyId(RFC_PUBLIC)).toBe("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
  });

  const good = formatPublicKey(RFC_PUBLIC);
  const bad: [string, string, RegExp][] = [
    ["missing prefix", good.slice("ed25519:".length), /does not start with "ed25519:"/],
    ["wrong prefix", `ed448:${good.slice(8)}`, /does not start with "ed25519:"/],
    ["too short", good.slice(0, -1), /got 42 chars/],
    ["too long", `${good}A`, /got 44 chars/],
    ["padding", `${good.slice(0, -1)}=`, /not canonical base64url/],
    ["standard alphabet", `${good.slice(0, -1)}+`, /not canonical base64url/],
    ["not a curve point", `ed25519:${toBase64url(Uint8Array.from({ length: 32 }, (_, i) => (i === 0 ? 2 : 0)))}`, /curve point/],
    ["small-order point (identity)", `ed25519:${toBase64url(Uint8Array.from({ length: 32 }, (_, i) => (i === 0 ? 1 : 0)))}`, /small-order/],
    ["uppercase prefix", `ED25519:${good.slice(8)}`, /does not start/],
  ];
  for (const [name, text, reason] of bad) {
    test(`rejects ${name} with a reason`, () => {
      const parsed = tryParsePublicKey(text);
      expect(parsed.ok).toBe(false);
      if (!parsed.ok) expect(parsed.reason).toMatch(reason);
      expect(() => parsePublicKey(text)).toThrow(KeyFormatError);
    });
  }

  test("formatPublicKey refuses bytes of the wrong length", () => {
    expect(() => formatPublicKey(new Uint8Array(31))).toThrow(/32 bytes/);
  });
});

describe("secret key file content", () => {
  test("is one documented line and parses back", () => {
    const key = SigningKey.fromSeed(RFC_SEED);
    const text = formatSecretKeyFile(key);
    expect(text).toBe(`fitb-ed25519-secret:${toBase64url(RFC_SEED)}\n`);
    expect(parseSecretKeyFile(text, "k").publicKey).toEqual(RFC_PUBLIC);
    expect(parseSecretKeyFile(text.replace("\n", "\r\n"), "k").publicKey).toEqual(RFC_PUBLIC);
  });

  test("rejects other content, naming the source", () => {
    expect(() => parseSecretKeyFile("hello\n", "/etc/x.key")).toThrow(/\/etc\/x\.key: not a fitb secret key file/);
    expect(() => parseSecretKeyFile("fitb-ed25519-secret:AAAA\n", "x.key")).toThrow(/x\.key: malformed secret key/);
    expect(() => parseSecretKeyFile(formatSecretKeyFile(SigningKey.generate()).repeat(2), "x.key")).toThrow(/not a fitb secret key file/);
  });
});

describe("key files", () => {
  test("write then load round trips, with mode 0600 and a .pub beside it", () => {
    const path = join(directory, "round.key");
    const key = SigningKey.generate();
    writeKeyPairFiles(path, key, { overwrite: false });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(readFileSync(`${path}.pub`, "utf8")).toBe(`${key.publicKeyText}\n`);
    const loaded = loadSigningKeyFile(path);
    expect(loaded.warnings).toEqual([]);
    expect(loaded.key.publicKey).toEqual(key.publicKey);
    expect(loadPublicKeyFile(`${path}.pub`)).toEqual(key.publicKey);
  });

  test("refuses to overwrite unless asked", () => {
    const path = join(directory, "once.key");
    const first = SigningKey.generate();
    writeKeyPairFiles(path, first, { overwrite: false });
    const error = (() => {
      try {
        writeKeyPairFiles(path, SigningKey.generate(), { overwrite: false });
      } catch (caught) {
        return caught;
      }
      return undefined;
    })();
    expect(error).toBeInstanceOf(KeyFileError);
    expect((error as KeyFileError).reason).toBe("exists");
    expect(loadSigningKeyFile(path).key.publicKey).toEqual(first.publicKey);
    const second = SigningKey.generate();
    writeKeyPairFiles(path, second, { overwrite: true });
    expect(loadSigningKeyFile(path).key.publicKey).toEqual(second.publicKey);
  });

  test("a directory that does not exist is named, with the command that makes it, and not made", () => {
    const missing = join(directory, "no-such-dir");
    const path = join(missing, "x.key");
    expect(() => writeKeyPairFiles(path, SigningKey.generate(), { overwrite: false })).toThrow(
      `cannot write ${path}: its directory ${missing} does not exist (make it first: mkdir -m 700 ${missing})`,
    );
    expect(existsSync(missing)).toBe(false);
  });

  test("a secret that group or others may access is refused, naming the file, its mode and the chmod", () => {
    const path = join(directory, "open.key");
    writeKeyPairFiles(path, SigningKey.generate(), { overwrite: false });
    for (const mode of [0o644, 0o640, 0o604, 0o610]) {
      chmodSync(path, mode);
      let error: unknown = null;
      try {
        loadSigningKeyFile(path);
      } catch (caught) {
        error = caught;
      }
      expect(error).toBeInstanceOf(KeyFileError);
      expect((error as KeyFileError).reason).toBe("permissions");
      expect((error as KeyFileError).message).toContain(path);
      expect((error as KeyFileError).message).toContain(`mode ${mode.toString(8)}`);
      expect((error as KeyFileError).message).toContain(`chmod 600 ${path}`);
    }
    chmodSync(path, 0o400);
    expect(loadSigningKeyFile(path).warnings).toEqual([]);
  });

  test("what the file is comes before its mode: a public key, a cluster file or garbage is named as such, even at 644", () => {
    const path = join(directory, "told.key");
    writeKeyPairFiles(path, SigningKey.generate(), { overwrite: false });
    // A .pub is 0644 as keygen writes it: the chmod the mode check would ask for would not help.
    expect(() => loadSigningKeyFile(`${path}.pub`)).toThrow(`${path}.pub is a public key file; --key takes the secret key, ${path}`);
    const lonePub = join(directory, "lone.key.pub");
    writeFileSync(lonePub, `${SigningKey.generate().publicKeyText}\n`, { mode: 0o644 });
    expect(() => loadSigningKeyFile(lonePub)).toThrow(`${lonePub} is a public key file; --key takes the secret key, the file that starts`);
    const cluster = join(directory, "cluster.toml");
    writeFileSync(cluster, 'name = "t"\n[[replicas]]\nid = 0\n', { mode: 0o644 });
    expect(() => loadSigningKeyFile(cluster)).toThrow(`${cluster} is a cluster file, not a secret key; --config takes it`);
    const garbage = join(directory, "open-garbage.key");
    writeFileSync(garbage, "not a key\n", { mode: 0o644 });
    expect(() => loadSigningKeyFile(garbage)).toThrow(`${garbage}: not a fitb secret key file`);
    for (const wrong of [`${path}.pub`, cluster, garbage]) {
      let error: unknown = null;
      try {
        loadSigningKeyFile(wrong);
      } catch (caught) {
        error = caught;
      }
      expect((error as KeyFileError).reason).toBe("format");
    }
  });

  test("a .pub that names a different key earns a warning", () => {
    const path = join(directory, "mismatch.key");
    writeKeyPairFiles(path, SigningKey.generate(), { overwrite: false });
    writeFileSync(`${path}.pub`, `${SigningKey.generate().publicKeyText}\n`);
    const loaded = loadSigningKeyFile(path);
    expect(loaded.warnings.join("\n")).toContain("does not match its secret key");
  });

  test("load errors name the file", () => {
    const missing = join(directory, "missing.key");
    expect(() => loadSigningKeyFile(missing)).toThrow(`cannot read key file ${missing}: no such file or directory`);
    const garbage = join(directory, "garbage.key");
    writeFileSync(garbage, "not a key\n", { mode: 0o600 });
    expect(() => loadSigningKeyFile(garbage)).toThrow(`${garbage}: not a fitb secret key file`);
    const badPub = join(directory, "bad.pub");
    writeFileSync(badPub, "ed25519:short\n");
    expect(() => loadPublicKeyFile(badPub)).toThrow(`${badPub}: expected "ed25519:<43 base64url chars>"`);
    expect(() => loadSigningKeyFile(directory)).toThrow("is not a regular file");
  });

  test("an oversized file is refused without being read whole", () => {
    const big = join(directory, "big.key");
    writeFileSync(big, "x".repeat(5000), { mode: 0o600 });
    expect(() => loadSigningKeyFile(big)).toThrow(/too large for a key file/);
  });

  test("write errors name the file", () => {
    const path = join(directory, "no-such-dir", "k.key");
    expect(() => writeKeyPairFiles(path, SigningKey.generate(), { overwrite: false })).toThrow(`cannot write ${path}`);
  });
});
