import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tomlErrorPosition } from "../../src/config/toml-position.ts";
import {
  formatAddress,
  formatConfigIssue,
  formatPath,
  LIMIT_BOUNDS,
  loadClusterConfig,
  channelsConfigFrom,
  newViewBytesBound,
  parseClusterConfig,
  replicaById,
  requireClusterConfig,
  RETENTION_BOUNDS,
  type ClusterConfigResult,
  type ConfigIssue,
} from "../../src/config/cluster.ts";
import { checkChannelsConfig } from "../../src/core/channels/index.ts";
import { renderClusterToml } from "../../src/config/init.ts";
import { toBase64url } from "../../src/crypto/encoding.ts";
import { formatPublicKey, SigningKey } from "../../src/crypto/keys.ts";
import { EVENT_BYTES_MAX, FRAME_BYTES_MAX, REPLICAS_MAX, REQUEST_EVENTS_MAX } from "../../wire/types.ts";

const directory = mkdtempSync(join(tmpdir(), "fitb-config-"));
afterAll(() => rmSync(directory, { recursive: true, force: true }));

const KEY_FORM = 'expected "ed25519:<43 base64url chars>"';

function keys(count: number): Uint8Array[] {
  return Array.from({ length: count }, () => SigningKey.generate().publicKey);
}

/** A valid file as `fitb cluster init` writes it, for n replicas and the largest f. */
function validToml(n = 4, f = Math.floor((n - 1) / 3)): string {
  return renderClusterToml({
    name: "test",
    f,
    replicas: keys(n).map((publicKey, id) => ({ id, host: "127.0.0.1", port: 7100 + id, publicKey })),
    adminKeys: keys(1),
    clientKeys: keys(1),
  });
}

function parse(text: string): ClusterConfigResult {
  return parseClusterConfig(text, join(directory, "cluster.toml"));
}

function errorsOf(text: string): ConfigIssue[] {
  const result = parse(text);
  if (result.ok) throw new Error("expected the config to be rejected");
  return [...result.errors];
}

/** The one error a broken file produces, formatted as the operator sees it. */
function onlyError(text: string): string {
  const errors = errorsOf(text);
  expect(errors.map(formatConfigIssue)).toHaveLength(1);
  return formatConfigIssue(errors[0]!);
}

/** Minimal hand-written file: replicas given as [id, host, port, key text]. */
function handToml(options: { f?: number; replicas?: [number, string, number, string][]; admins?: string[]; extra?: string }): string {
  const replicas =
    options.replicas ?? keys(4).map((key, id): [number, string, number, string] => [id, "127.0.0.1", 7100 + id, formatPublicKey(key)]);
  const admins = options.admins ?? [formatPublicKey(keys(1)[0]!)];
  const lines = [`name = "hand"`, `f = ${options.f ?? 1}`, `admin_keys = [${admins.map((key) => JSON.stringify(key)).join(", ")}]`];
  if (options.extra !== undefined) lines.push(options.extra);
  for (const [id, host, port, key] of replicas) {
    lines.push("[[replicas]]", `id = ${id}`, `host = ${JSON.stringify(host)}`, `port = ${port}`, `key = ${JSON.stringify(key)}`);
  }
  return `${lines.join("\n")}\n`;
}

/** Replicas 0..count-1 on 127.0.0.1, each with a fresh key: handToml's replicas. */
function replicas(count: number): [number, string, number, string][] {
  return keys(count).map((key, id): [number, string, number, string] => [id, "127.0.0.1", 7100 + id, formatPublicKey(key)]);
}

describe("a valid cluster file", () => {
  test("the generated file parses, with n, f, keys and every default", () => {
    const result = parse(validToml(4));
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    const { config } = result;
    expect([config.name, config.n, config.f]).toEqual(["test", 4, 1]);
    expect(config.replicas.map((replica) => replica.id)).toEqual([0, 1, 2, 3]);
    expect(config.replicas[2]!.port).toBe(7102);
    expect(config.replicas[2]!.publicKey.byteLength).toBe(32);
    expect(config.replicas[2]!.publicKeyText).toBe(formatPublicKey(config.replicas[2]!.publicKey));
    expect(config.adminKeys).toHaveLength(1);
    expect(config.clientKeys).toHaveLength(1);
    expect(config.limits.frameBytesMax).toBe(LIMIT_BOUNDS.frame_bytes_max.defaultValue);
    expect(config.retention.ageSecondsMax).toBe(RETENTION_BOUNDS.age_seconds_max.defaultValue);
  });

  test("larger groups parse too (n = 7, f = 2; n = 10, f = 3)", () => {
    for (const [n, f] of [
      [7, 2],
      [10, 3],
    ] as const) {
      const result = parse(validToml(n, f));
      expect(result.ok && [result.config.n, result.config.f]).toEqual([n, f]);
    }
  });

  test("optional tables and lists take their defaults", () => {
    const result = parse(handToml({}));
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.config.clientKeys).toEqual([]);
    expect(result.config.limits.batchEventsMax).toBe(LIMIT_BOUNDS.batch_events_max.defaultValue);
    expect(result.config.retention.eventsMax).toBe(RETENTION_BOUNDS.events_max.defaultValue);
  });

  test("limits may be set; unset ones keep their defaults", () => {
    const result = parse(`${handToml({})}[limits]\nbatch_events_max = 10\n[retention]\nevents_max = 50\n`);
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.config.limits.batchEventsMax).toBe(10);
    expect(result.config.limits.eventBytesMax).toBe(LIMIT_BOUNDS.event_bytes_max.defaultValue);
    expect(result.config.retention.eventsMax).toBe(50);
  });

  test("retention the replicas would refuse is refused by the check, naming the field", () => {
    expect(onlyError(`${handToml({})}[limits]\nbatch_events_max = 10\n[retention]\nevents_max = 5\n`)).toBe(
      "retention.events_max: expected at least limits.batch_events_max (10), so a channel can hold the largest publish; got 5",
    );
    expect(onlyError(`${handToml({})}[retention]\nevents_max = 20000000\n`)).toMatch(
      /^retention\.events_max: expected an integer in 1\.\.10000000/,
    );
    expect(onlyError(`${handToml({})}[retention]\nbytes_max = 2048\n`)).toMatch(/^retention\.bytes_max: expected at least 2097152/);
    // Every file the check accepts makes a channel configuration the replicas accept.
    for (const [events, bytes, batch, frame] of [
      [1024, 4 * 1024 * 1024, 1024, 4 * 1024 * 1024],
      [10, 2 * 1024 * 1024, 10, 1024 * 1024],
      [10_000_000, 1024 * 1024 * 1024, 16_384, 4 * 1024 * 1024],
    ]) {
      const text =
        handToml({}) +
        `[limits]\nbatch_events_max = ${batch}\nframe_bytes_max = ${frame}\nevent_bytes_max = 1024\n[retention]\nevents_max = ${events}\nbytes_max = ${bytes}\n`;
      const result = parse(text);
      expect(result.ok).toBe(true);
      if (result.ok) expect(checkChannelsConfig(channelsConfigFrom(result.config.limits, result.config.retention))).toBeNull();
    }
  });

  test("replicas may be listed in any order and come out sorted by id", () => {
    const [a, b, c, d] = keys(4).map(formatPublicKey) as [string, string, string, string];
    const result = parse(
      handToml({
        replicas: [
          [3, "h3", 1, a],
          [1, "h1", 1, b],
          [0, "h0", 1, c],
          [2, "h2", 1, d],
        ],
      }),
    );
    expect(result.ok && result.config.replicas.map((replica) => replica.host)).toEqual(["h0", "h1", "h2", "h3"]);
  });

  test("ids need not be 0..n-1: a group with gaps (after remove-replica) parses, sorted by id, each found by id", () => {
    const [a, b, c, d] = keys(4).map(formatPublicKey) as [string, string, string, string];
    const result = parse(
      handToml({
        replicas: [
          [4, "127.0.0.1", 7104, d],
          [0, "127.0.0.1", 7100, a],
          [3, "127.0.0.1", 7103, c],
          [2, "127.0.0.1", 7102, b],
        ],
      }),
    );
    if (!result.ok) throw new Error(JSON.stringify(result.errors));
    const { config } = result;
    expect([config.n, config.f, config.epoch, config.firstGroupDigest]).toEqual([4, 1, 0, null]);
    expect(config.replicas.map((replica) => replica.id)).toEqual([0, 2, 3, 4]);
    expect(replicaById(config, 4)?.port).toBe(7104);
    expect(replicaById(config, 4)?.keyFile).toBe(join(directory, "replica-4.key"));
    expect(replicaById(config, 1)).toBeUndefined();
  });

  test("a file of a later epoch names the first group's digest; the two go together and the digest is 64 hex digits", () => {
    const digest = "ab".repeat(32);
    const later = parse(handToml({ extra: `epoch = 3\nfirst_group_digest = "${digest}"` }));
    if (!later.ok) throw new Error(JSON.stringify(later.errors));
    expect(later.config.epoch).toBe(3);
    expect(Buffer.from(later.config.firstGroupDigest as Uint8Array).toString("hex")).toBe(digest);
    expect(onlyError(handToml({ extra: "epoch = 3" }))).toBe(
      "first_group_digest: missing: a file of epoch 3 names the digest of the group the cluster started with (write the file with fitb cluster export)",
    );
    expect(onlyError(handToml({ extra: `first_group_digest = "${digest}"` }))).toBe(
      "first_group_digest: only for a file of a later epoch (epoch >= 1), and this file sets no epoch: remove it, or set epoch",
    );
    expect(onlyError(handToml({ extra: 'epoch = 3\nfirst_group_digest = "AB"' }))).toBe(
      'first_group_digest: expected 64 lowercase hex digits (the digest `fitb cluster export` writes), got "AB"',
    );
  });

  test("key_file and data_dir are relative to the config file, with defaults", () => {
    const text = handToml({}).replace("id = 1\n", 'id = 1\nkey_file = "secrets/one.key"\ndata_dir = "/var/lib/fitb/one"\n');
    const result = parseClusterConfig(text, "/etc/fitb/cluster.toml");
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.config.baseDir).toBe("/etc/fitb");
    expect(result.config.replicas[0]!.keyFile).toBe("/etc/fitb/replica-0.key");
    expect(result.config.replicas[0]!.dataDir).toBe("/etc/fitb/data/replica-0");
    expect(result.config.replicas[1]!.keyFile).toBe("/etc/fitb/secrets/one.key");
    expect(result.config.replicas[1]!.dataDir).toBe("/var/lib/fitb/one");
  });

  test("hostnames, IPv4 and IPv6 hosts are accepted; IPv6 addresses print in brackets", () => {
    const [a, b, c, d] = keys(4).map(formatPublicKey) as [string, string, string, string];
    const result = parse(
      handToml({
        replicas: [
          [0, "replica-0.dc1.example.net", 7100, a],
          [1, "10.0.0.2", 7100, b],
          [2, "::1", 7100, c],
          [3, "fd00::3", 7100, d],
        ],
      }),
    );
    expect(result.ok).toBe(true);
    expect(formatAddress("::1", 7100)).toBe("[::1]:7100");
    expect(formatAddress("10.0.0.2", 7100)).toBe("10.0.0.2:7100");
  });
});

describe("rejected files name the field and the expected form", () => {
  test("n = 3 with f = 1 violates n >= 3f+1", () => {
    expect(onlyError(validToml(3, 1))).toBe(
      "f: f = 1 needs n >= 3f+1 = 4 replicas, but the file lists n = 3; add replicas or lower f to 0",
    );
  });

  test("a bad replica key", () => {
    const text = validToml(4).replace(
      /key = "ed25519:([^"]+)"\n# key_file = "replica-2/,
      'key = "ed25519:not-a-key"\n# key_file = "replica-2',
    );
    expect(onlyError(text)).toBe(`replicas[2].key: ${KEY_FORM}, got 9 chars after "ed25519:"`);
  });

  test("a key without the prefix, and a key that is not a point", () => {
    const notPoint = `ed25519:${toBase64url(Uint8Array.from({ length: 32 }, (_, i) => (i === 0 ? 2 : 0)))}`;
    const errors = errorsOf(handToml({ admins: [toBase64url(keys(1)[0]!), notPoint] })).map(formatConfigIssue);
    expect(errors).toEqual([
      `admin_keys[0]: ${KEY_FORM}, the text does not start with "ed25519:"`,
      "admin_keys[1]: not a valid ed25519 public key (the bytes do not encode a curve point)",
    ]);
  });

  test("a missing top-level field", () => {
    expect(onlyError(validToml(4).replace('name = "test"\n', ""))).toMatch(/^name: missing, expected a name of 1\.\.64 chars/);
  });

  test("a missing replica field", () => {
    expect(onlyError(validToml(4).replace("port = 7101\n", ""))).toBe("replicas[1].port: missing, expected a port number in 1..65535");
  });

  test("a field of the wrong type", () => {
    expect(onlyError(validToml(4).replace("f = 1", 'f = "1"'))).toBe('f: expected an integer in 0..21, got "1"');
    expect(onlyError(validToml(4).replace("port = 7100", "port = 70000"))).toBe(
      "replicas[0].port: expected a port number in 1..65535, got 70000",
    );
  });

  test("no replicas, no admins", () => {
    const errors = errorsOf('name = "x"\nf = 0\nadmin_keys = []\n').map(formatConfigIssue);
    expect(errors).toEqual([
      "replicas: missing, expected an array of 1..64 [[replicas]] tables",
      `admin_keys: expected an array of 1..64 admin keys, each "ed25519:<43 base64url chars>", got an empty array`,
    ]);
  });

  test("an unknown field, at the top or inside a table", () => {
    const errors = errorsOf(validToml(4).replace("f = 1", "f = 1\nreplica_count = 4").replace("port = 7103", "port = 7103\nprot = 1"));
    expect(errors.map((issue) => issue.path).sort()).toEqual(["replica_count", "replicas[3].prot"]);
    for (const issue of errors) expect(issue.message).toContain("unknown field");
  });

  test("duplicate replica ids are refused; ids out of 0..REPLICAS_MAX-1 too", () => {
    const [a, b, c, d] = keys(4).map(formatPublicKey) as [string, string, string, string];
    expect(
      errorsOf(
        handToml({
          replicas: [
            [0, "h", 1, a],
            [1, "h", 2, b],
            [1, "h", 3, c],
            [3, "h", 4, d],
          ],
        }),
      ).map(formatConfigIssue),
    ).toEqual(["replicas[2].id: duplicate id 1 (also replicas[1].id)"]);
    expect(
      onlyError(
        handToml({
          replicas: [
            [0, "h", 1, a],
            [1, "h", 2, b],
            [2, "h", 3, c],
            [REPLICAS_MAX, "h", 4, d],
          ],
        }),
      ),
    ).toBe(`replicas[3].id: expected an integer in 0..${REPLICAS_MAX - 1}, got ${REPLICAS_MAX}`);
  });

  test("two replicas at one address", () => {
    const [a, b, c, d] = keys(4).map(formatPublicKey) as [string, string, string, string];
    expect(
      onlyError(
        handToml({
          replicas: [
            [0, "h", 1, a],
            [1, "H", 1, b],
            [2, "h", 3, c],
            [3, "h", 4, d],
          ],
        }),
      ),
    ).toBe("replicas[1].port: address h:1 is already used by replicas[0]");
  });

  test("peer_port is optional; a peer port may not take another replica's or its own client address", () => {
    const base = validToml(4);
    const shared = parse(base);
    expect(shared.ok && shared.config.replicas.map((r) => r.peerPort)).toEqual([null, null, null, null]);
    const split = parse(base.replace("port = 7100\n", "port = 7100\npeer_port = 8100\n"));
    expect(split.ok && split.config.replicas.map((r) => r.peerPort)).toEqual([8100, null, null, null]);
    expect(onlyError(base.replace("port = 7101\n", "port = 7101\npeer_port = 7100\n"))).toBe(
      "replicas[1].peer_port: address 127.0.0.1:7100 is already used by replicas[0]",
    );
    expect(onlyError(base.replace("port = 7101\n", "port = 7101\npeer_port = 7101\n"))).toBe(
      "replicas[1].peer_port: address 127.0.0.1:7101 is already used by replicas[1]",
    );
    expect(onlyError(base.replace("port = 7101\n", "port = 7101\npeer_port = 0\n"))).toBe(
      "replicas[1].peer_port: expected a port number in 1..65535, got 0",
    );
  });

  test("a key shared by two replicas, or by a replica and an admin", () => {
    const [a, b, c] = keys(3).map(formatPublicKey) as [string, string, string];
    const errors = errorsOf(
      handToml({
        replicas: [
          [0, "h", 1, a],
          [1, "h", 2, b],
          [2, "h", 3, c],
          [3, "h", 4, a],
        ],
        admins: [b],
      }),
    );
    expect(errors.map(formatConfigIssue)).toEqual([
      "replicas[3].key: the same key as replicas[0].key; every replica and admin needs its own key",
      "admin_keys[0]: the same key as replicas[1].key; every replica and admin needs its own key",
    ]);
  });

  test("bad hosts and names", () => {
    expect(onlyError(validToml(4).replace('host = "127.0.0.1"', 'host = "bad host"'))).toBe(
      'replicas[0].host: expected a hostname, an IPv4 address or an IPv6 address (without brackets), got "bad host"',
    );
    expect(onlyError(validToml(4).replace('host = "127.0.0.1"', 'host = "999.0.0.1"'))).toMatch(
      /^replicas\[0\]\.host: expected a hostname/,
    );
    expect(onlyError(validToml(4).replace('host = "127.0.0.1"', 'host = "[::1]"'))).toMatch(/^replicas\[0\]\.host/);
    expect(onlyError(validToml(4).replace('name = "test"', 'name = "has space"'))).toMatch(/^name: expected a name/);
  });

  test("limits out of range, and limits that contradict each other", () => {
    expect(onlyError(`${handToml({})}[limits]\nbatch_events_max = 0\n`)).toBe(
      `limits.batch_events_max: expected an integer in 1..${REQUEST_EVENTS_MAX}, got 0`,
    );
    expect(onlyError(`${handToml({})}[limits]\nframe_bytes_max = 1.5\n`)).toMatch(/^limits\.frame_bytes_max: expected an integer/);
    expect(onlyError(`${handToml({})}[limits]\nframe_bytes_max = 1048576\nevent_bytes_max = 1048576\n`)).toMatch(
      /^limits\.event_bytes_max: expected less than limits\.frame_bytes_max \(1048576\)/,
    );
    expect(onlyError(`${handToml({})}[limits]\nbatch_events_max = 100\nclient_burst_events_max = 99\n`)).toMatch(
      /^limits\.client_burst_events_max: expected at least limits\.batch_events_max \(100\)/,
    );
  });

  test("frames must hold the largest NEW_VIEW a leader change can need, for this f", () => {
    const needed = newViewBytesBound(4, 1);
    expect(onlyError(`${handToml({})}[limits]\nframe_bytes_max = ${needed - 1}\nevent_bytes_max = 1024\n`)).toBe(
      `limits.frame_bytes_max: with n = 4 and f = 1 (quorums of 3 replicas), a leader change may need a NEW_VIEW message of up to ${needed} bytes, more than limits.frame_bytes_max (${needed - 1}); raise limits.frame_bytes_max to at least ${needed}`,
    );
    expect(parse(`${handToml({})}[limits]\nframe_bytes_max = ${needed}\nevent_bytes_max = 1024\n`).ok).toBe(true);
    // f = 5 (16 replicas) cannot fit any frame the protocol allows; f = 4 with 13 can.
    expect(onlyError(handToml({ f: 5, replicas: replicas(16) }))).toMatch(
      /^limits\.frame_bytes_max: with n = 16 and f = 5 \(quorums of 11 replicas\), .* so with 16 replicas use at most f = 1$/,
    );
    expect(parse(handToml({ f: 4, replicas: replicas(13) })).ok).toBe(true);
  });

  test("frames must hold the NEW_VIEW of the file's n, not only of its f: the quorum ceil((n+f+1)/2) grows with n", () => {
    // 13 replicas with f = 4 have quorums of 9 and fit the largest frames; a 14th makes them
    // 10, whose NEW_VIEW no frame holds, though f (and 2f+1) did not change.
    expect(newViewBytesBound(14, 4)).toBeGreaterThan(FRAME_BYTES_MAX);
    expect(onlyError(handToml({ f: 4, replicas: replicas(14) }))).toBe(
      `limits.frame_bytes_max: with n = 14 and f = 4 (quorums of 10 replicas), a leader change may need a NEW_VIEW message of up to ${newViewBytesBound(14, 4)} bytes, more than limits.frame_bytes_max (${FRAME_BYTES_MAX}); frames are at most ${FRAME_BYTES_MAX} bytes, so with 14 replicas use at most f = 3`,
    );
    expect(parse(handToml({ f: 3, replicas: replicas(14) })).ok).toBe(true);
    expect(parse(handToml({ f: 1, replicas: replicas(16) })).ok).toBe(true);
    expect(onlyError(handToml({ f: 1, replicas: replicas(17) }))).toMatch(/so with 17 replicas use at most f = 0$/);
    // 18 replicas have quorums of at least 10 whatever f.
    expect(onlyError(handToml({ f: 0, replicas: replicas(18) }))).toMatch(
      /no f lets 18 replicas change leaders over them: use at most 17 replicas$/,
    );
    // Smaller frames hold smaller groups: 1 MiB fits 6 replicas with f = 1, not 7.
    const limits = "[limits]\nframe_bytes_max = 1048576\nevent_bytes_max = 1024\n";
    expect(parse(`${handToml({ f: 1, replicas: replicas(6) })}${limits}`).ok).toBe(true);
    expect(onlyError(`${handToml({ f: 1, replicas: replicas(7) })}${limits}`)).toMatch(
      /^limits\.frame_bytes_max: with n = 7 and f = 1 \(quorums of 5 replicas\), .* raise limits\.frame_bytes_max to at least \d+$/,
    );
  });

  test("limits may lower the wire protocol's maxima but not raise them", () => {
    expect(LIMIT_BOUNDS.frame_bytes_max.max).toBe(FRAME_BYTES_MAX);
    expect(LIMIT_BOUNDS.event_bytes_max.max).toBe(EVENT_BYTES_MAX);
    expect(LIMIT_BOUNDS.batch_events_max.max).toBe(REQUEST_EVENTS_MAX);
    expect(onlyError(`${handToml({})}[limits]\nframe_bytes_max = ${FRAME_BYTES_MAX + 1}\n`)).toBe(
      `limits.frame_bytes_max: expected an integer in 4096..${FRAME_BYTES_MAX}, got ${FRAME_BYTES_MAX + 1}`,
    );
    expect(parse(`${handToml({})}[limits]\nframe_bytes_max = ${FRAME_BYTES_MAX}\n`).ok).toBe(true);
  });

  test("TOML syntax errors name the file, the line and the column, and quote the line", () => {
    const source = join(directory, "cluster.toml");
    expect(onlyError('name = "unterminated\n')).toStartWith(`${source}:1:`);
    expect(onlyError('name = "x"\n[limits\nfoo = 1\n')).toBe(
      `${source}:2:8: not valid TOML: Expected ']' to close a table header but found (0x0A) (line 2: "[limits")`,
    );
    expect(onlyError("a = 1\nb = 1 2\nc = 3\n")).toStartWith(`${source}:2:7: not valid TOML: `);
    expect(onlyError("arr = [1,\n2,,\n3]\n")).toStartWith(`${source}:2:3: not valid TOML: Expected a value but found ','`);
    // A multi-line array before the error does not mislead the search.
    expect(onlyError('a = [\n  1,\n  2,\n]\nname = "x"\nx = tru\n')).toStartWith(`${source}:6:7: not valid TOML: `);
  });

  test("text holding a secret key is refused without quoting it: a key file given as --config, or a secret pasted as a replica's key", () => {
    const source = join(directory, "cluster.toml");
    const secret = `fitb-ed25519-secret:${toBase64url(SigningKey.generate().exportSeed())}`;
    const asFile = onlyError(`${secret}\n`);
    expect(asFile).toBe(
      `${source}: line 1 holds a secret key (fitb-ed25519-secret:...), not shown here; a cluster file names public keys only. ${source} looks like a key file (what fitb keygen writes): --config takes the cluster file (cluster.toml), --key the secret key file.`,
    );
    const pasted = handToml({}).replace(/key = "ed25519:[^"]*"/, `key = "${secret}"`);
    expect(pasted).toContain(secret);
    const inField = onlyError(pasted);
    expect(inField).toContain("holds a secret key (fitb-ed25519-secret:...), not shown here");
    expect(inField).toContain("Put the replica's or client's public key");
    for (const message of [asFile, inField]) expect(message).not.toContain(secret.slice("fitb-ed25519-secret:".length));
    // The prefix alone (a comment that names it) is no key.
    expect(parse(`# never paste a fitb-ed25519-secret: here\n${handToml({})}`).ok).toBe(true);
  });

  test("tomlErrorPosition: null for valid TOML", () => {
    expect(tomlErrorPosition('a = 1\n[t]\nb = "x"\n')).toBeNull();
  });
});

describe("loading from disk", () => {
  test("loadClusterConfig reads and validates a file", () => {
    const path = join(directory, "disk.toml");
    writeFileSync(path, validToml(4));
    const result = loadClusterConfig(path);
    expect(result.ok && result.config.baseDir).toBe(directory);
    expect(requireClusterConfig(path).n).toBe(4);
  });

  test("a missing file is one issue naming it", () => {
    const path = join(directory, "nope.toml");
    const result = loadClusterConfig(path);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.errors.map(formatConfigIssue)).toEqual([`cannot read ${path}: no such file or directory`]);
  });

  test("requireClusterConfig throws with every issue listed", () => {
    const path = join(directory, "bad.toml");
    writeFileSync(path, validToml(3, 1).replace("port = 7100", "port = 0"));
    expect(() => requireClusterConfig(path)).toThrow(/replicas\[0\]\.port: expected a port number/);
  });

  test("an oversized file is refused without parsing", () => {
    const path = join(directory, "huge.toml");
    writeFileSync(path, `# ${"x".repeat(1024 * 1024)}\n`);
    const result = loadClusterConfig(path);
    expect(!result.ok && result.errors[0]!.message).toContain("a cluster file is at most");
  });
});

test("formatPath writes indexes in brackets", () => {
  expect(formatPath(["replicas", 2, "key"])).toBe("replicas[2].key");
  expect(formatPath(["limits", "frame_bytes_max"])).toBe("limits.frame_bytes_max");
  expect(formatPath([])).toBe("");
});

describe("multi-homed replicas (hosts)", () => {
  /** The generated file with replica 1's `hosts` line set to `hostsLine`. */
  function withHosts(hostsLine: string): string {
    const text = validToml(4);
    return text.replace(/(\[\[replicas\]\]\nid = 1\nhost = "127\.0\.0\.1")/, `$1\n${hostsLine}`);
  }

  test("further addresses parse in order; a replica without them has none; cluster init writes them", () => {
    const result = parse(withHosts('hosts = ["10.1.0.2", "data-1.example.net", "fd00::2"]'));
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.config.replicas[1]!.hosts).toEqual(["10.1.0.2", "data-1.example.net", "fd00::2"]);
    expect(result.config.replicas[0]!.hosts).toEqual([]);
    const written = renderClusterToml({
      name: "t",
      f: 1,
      replicas: keys(4).map((publicKey, id) => ({ id, host: `10.0.0.${id + 1}`, hosts: [`10.1.0.${id + 1}`], port: 7100, publicKey })),
      adminKeys: keys(1),
      clientKeys: [],
    });
    const reread = parse(written);
    expect(reread.ok && reread.config.replicas.map((replica) => [replica.host, ...replica.hosts])).toEqual([
      ["10.0.0.1", "10.1.0.1"],
      ["10.0.0.2", "10.1.0.2"],
      ["10.0.0.3", "10.1.0.3"],
      ["10.0.0.4", "10.1.0.4"],
    ]);
  });

  test("each is validated like host, and no address may repeat one of any replica", () => {
    expect(onlyError(withHosts('hosts = ["10.1.0.2", "999.1.1.1"]'))).toBe(
      'replicas[1].hosts[1]: expected a hostname, an IPv4 address or an IPv6 address (without brackets), got "999.1.1.1"',
    );
    expect(onlyError(withHosts('hosts = "10.1.0.2"'))).toStartWith("replicas[1].hosts: expected an array of at most 8 further addresses");
    expect(onlyError(withHosts('hosts = ["127.0.0.1"]'))).toBe(
      "replicas[1].hosts[0]: address 127.0.0.1:7101 is already used by this replica",
    );
    const text = validToml(4).replace(
      /(\[\[replicas\]\]\nid = 1\nhost = "127\.0\.0\.1"\n)port = 7101/,
      '$1hosts = ["10.9.0.1"]\nport = 7100',
    );
    expect(errorsOf(text).map(formatConfigIssue)).toContain("replicas[1].port: address 127.0.0.1:7100 is already used by replicas[0]");
    const many = Array.from({ length: 9 }, (_, i) => `"10.1.0.${i + 1}"`).join(", ");
    expect(onlyError(withHosts(`hosts = [${many}]`))).toStartWith("replicas[1].hosts: expected an array of at most 8 further addresses");
  });
});
