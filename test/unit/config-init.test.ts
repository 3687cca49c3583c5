import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ClusterConfigError, loadClusterConfig } from "../../src/config/cluster.ts";
import {
  assembleCluster,
  ClusterInitError,
  faultToleranceFor,
  INIT_REPLICAS_MAX,
  initCluster,
  PEER_PORT_OFFSET,
  type ClusterInitOptions,
} from "../../src/config/init.ts";
import { formatPublicKey, loadPublicKeyFile, loadSigningKeyFile, SigningKey, writeKeyPairFiles } from "../../src/crypto/keys.ts";

const directory = mkdtempSync(join(tmpdir(), "fitb-init-"));
afterAll(() => rmSync(directory, { recursive: true, force: true }));

function options(dir: string, overrides: Partial<ClusterInitOptions> = {}): ClusterInitOptions {
  return { dir, replicas: 4, host: "127.0.0.1", basePort: 7100, name: "local", overwrite: false, ...overrides };
}

test("f is the largest the group tolerates", () => {
  expect([4, 5, 6, 7, 10, 13].map(faultToleranceFor)).toEqual([1, 1, 1, 2, 3, 4]);
  // Past 13 a leader change's quorums (of ceil((n+f+1)/2) replicas) outgrow the default
  // frames at the f the count allows: the largest f that fits, so the file passes its check.
  expect([14, 15, 16].map(faultToleranceFor)).toEqual([3, 2, 1]);
  expect(() =>
    initCluster({ dir: "/nonexistent-never-written", replicas: 17, host: "127.0.0.1", basePort: 7000, name: "t", overwrite: false }),
  ).toThrow(
    "17 replicas could not change leaders over the default frames at any f >= 1 (a NEW_VIEW carries quorums that grow with n): use at most 16 replicas",
  );
  // Past 17 no f fits either (not even 0): refused here, not written and then refused by the file's check.
  expect(INIT_REPLICAS_MAX).toBe(16);
  for (const replicas of [18, 40, 64]) {
    expect(faultToleranceFor(replicas)).toBe(0);
    expect(() =>
      initCluster({ dir: "/nonexistent-never-written", replicas, host: "127.0.0.1", basePort: 7000, name: "t", overwrite: false }),
    ).toThrow(
      `${replicas} replicas could not change leaders over the default frames at any f >= 1 (a NEW_VIEW carries quorums that grow with n): use at most 16 replicas`,
    );
  }
});

describe("initCluster", () => {
  test("writes a valid cluster file and every key pair, secrets at mode 0600", () => {
    const dir = join(directory, "four");
    const result = initCluster(options(dir));
    expect(readdirSync(dir).sort()).toEqual([
      "admin.key",
      "admin.key.pub",
      "client.key",
      "client.key.pub",
      "cluster.toml",
      "replica-0.key",
      "replica-0.key.pub",
      "replica-1.key",
      "replica-1.key.pub",
      "replica-2.key",
      "replica-2.key.pub",
      "replica-3.key",
      "replica-3.key.pub",
    ]);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    const loaded = loadClusterConfig(result.configPath);
    expect(loaded.ok).toBe(true);
    if (!loaded.ok) return;
    const { config } = loaded;
    expect([config.name, config.n, config.f]).toEqual(["local", 4, 1]);
    for (const replica of config.replicas) {
      expect(replica.port).toBe(7100 + replica.id);
      expect(replica.keyFile).toBe(join(dir, `replica-${replica.id}.key`));
      expect(statSync(replica.keyFile).mode & 0o777).toBe(0o600);
      const key = loadSigningKeyFile(replica.keyFile);
      expect(key.warnings).toEqual([]);
      expect(key.key.publicKey).toEqual(replica.publicKey);
    }
    expect(loadPublicKeyFile(`${result.adminKeyFile}.pub`)).toEqual(config.adminKeys[0]!);
    expect(loadSigningKeyFile(result.clientKeyFile).warnings).toEqual([]);
    // No allow-list by default: any key may connect, and may publish only where registered.
    expect(config.clientKeys).toEqual([]);
  });

  test("the file is commented for an operator editing it for real hosts", () => {
    const result = initCluster(options(join(directory, "commented")));
    const text = readFileSync(result.configPath, "utf8");
    expect(text).toContain("n >= 3f+1");
    expect(text).toContain("For real hosts, change host");
    expect(text).toContain("[limits]");
  });

  test("uses the host, base port, name and size it is given", () => {
    const result = initCluster(options(join(directory, "seven"), { replicas: 7, host: "10.1.2.3", basePort: 9000, name: "east" }));
    expect(result.config.n).toBe(7);
    expect(result.config.f).toBe(2);
    expect(result.config.name).toBe("east");
    expect(result.config.replicas[6]).toMatchObject({ host: "10.1.2.3", port: 9006 });
  });

  test("writes a peer_port per replica, PEER_PORT_OFFSET above the client ports (below when they would not fit), or none when asked", () => {
    const above = initCluster(options(join(directory, "peers-above")));
    expect(above.config.replicas.map((r) => [r.port, r.peerPort])).toEqual([
      [7100, 7100 + PEER_PORT_OFFSET],
      [7101, 7101 + PEER_PORT_OFFSET],
      [7102, 7102 + PEER_PORT_OFFSET],
      [7103, 7103 + PEER_PORT_OFFSET],
    ]);
    expect(readFileSync(above.configPath, "utf8")).toContain(`peer_port = ${7100 + PEER_PORT_OFFSET}`);
    const below = initCluster(options(join(directory, "peers-below"), { basePort: 65_000 }));
    expect(below.config.replicas[0]?.peerPort).toBe(65_000 - PEER_PORT_OFFSET);
    const none = initCluster(options(join(directory, "peers-none"), { peerBasePort: null }));
    expect(none.config.replicas.map((r) => r.peerPort)).toEqual([null, null, null, null]);
    expect(readFileSync(none.configPath, "utf8")).not.toContain("peer_port =");
    expect(() => initCluster(options(join(directory, "peers-overlap"), { peerBasePort: 7102 }))).toThrow(/overlap the client ports/);
  });

  test("refuses to overwrite an existing directory's files unless asked", () => {
    const dir = join(directory, "again");
    const first = initCluster(options(dir));
    expect(() => initCluster(options(dir))).toThrow(ClusterInitError);
    expect(readFileSync(first.configPath, "utf8")).toContain(first.config.replicas[0]!.publicKeyText);
    const second = initCluster(options(dir, { overwrite: true }));
    expect(second.config.replicas[0]!.publicKeyText).not.toBe(first.config.replicas[0]!.publicKeyText);
  });

  test("invalid options write nothing", () => {
    const tooFew = join(directory, "three");
    expect(() => initCluster(options(tooFew, { replicas: 3 }))).toThrow(/replicas must be an integer in 4\.\.16/);
    const badPort = join(directory, "port");
    expect(() => initCluster(options(badPort, { basePort: 65_533 }))).toThrow(/base port must leave room for 4/);
    const badHost = join(directory, "host");
    expect(() => initCluster(options(badHost, { host: "no such host!" }))).toThrow(ClusterConfigError);
    const badName = join(directory, "name");
    expect(() => initCluster(options(badName, { name: "" }))).toThrow(/name: expected a name/);
    for (const dir of [tooFew, badPort, badHost, badName]) expect(existsSync(dir)).toBe(false);
  });
});

describe("assembleCluster (--keys-from): the cluster file from public keys, no secret anywhere but on its own host", () => {
  /** Each "host" makes its own key; only the .pub files are copied to `collected`. */
  function collect(name: string, replicas: number, admins = 1): { collected: string; replicaKeys: SigningKey[]; adminKeys: SigningKey[] } {
    const collected = join(directory, `${name}-pubs`);
    const replicaKeys: SigningKey[] = [];
    for (let id = 0; id < replicas; id++) {
      const host = join(directory, `${name}-host-${id}`);
      const key = SigningKey.generate();
      writeKeyPairFiles(join(ensureDir(host), `replica-${id}.key`), key, { overwrite: false });
      replicaKeys.push(key);
      copyFileSync(join(host, `replica-${id}.key.pub`), join(ensureDir(collected), `replica-${id}.key.pub`));
    }
    const adminKeys = Array.from({ length: admins }, (_, index) => {
      const key = SigningKey.generate();
      const file = index === 0 ? "admin.key" : `admin-${index}.key`;
      writeKeyPairFiles(join(ensureDir(join(directory, `${name}-admin`)), file), key, { overwrite: false });
      copyFileSync(join(directory, `${name}-admin`, `${file}.pub`), join(collected, `${file}.pub`));
      return key;
    });
    return { collected, replicaKeys, adminKeys };
  }

  function ensureDir(path: string): string {
    mkdirSync(path, { recursive: true });
    return path;
  }

  test("writes only cluster.toml, listing every replica's and admin's public key", () => {
    const { collected, replicaKeys, adminKeys } = collect("prod", 4, 2);
    const dir = join(directory, "prod");
    const result = assembleCluster(options(dir, { name: "prod", host: "10.0.1.11" }), collected);
    expect(readdirSync(dir)).toEqual(["cluster.toml"]);
    expect(result.config.replicas.map((replica) => replica.publicKeyText)).toEqual(
      replicaKeys.map((key) => formatPublicKey(key.publicKey)),
    );
    const texts = (keys: readonly Uint8Array[]) => keys.map((key) => formatPublicKey(key)).sort();
    expect(texts(result.config.adminKeys)).toEqual(texts(adminKeys.map((key) => key.publicKey)));
    expect(result.config.clientKeys).toEqual([]);
  });

  test("a missing replica or admin key is named with the command that makes it, and nothing is written", () => {
    const { collected } = collect("partial", 3);
    const dir = join(directory, "partial");
    expect(() => assembleCluster(options(dir), collected)).toThrow(
      /replica-3\.key\.pub is missing: on replica 3's host run 'fitb keygen --out replica-3\.key'/,
    );
    const noAdmin = join(directory, "noadmin-pubs");
    mkdirSync(noAdmin, { recursive: true });
    for (let id = 0; id < 4; id++)
      copyFileSync(join(collected, `replica-${Math.min(id, 2)}.key.pub`), join(noAdmin, `replica-${id}.key.pub`));
    expect(() => assembleCluster(options(dir), noAdmin)).toThrow(/no admin key/);
    expect(existsSync(dir)).toBe(false);
  });
});
