// Where commands find the cluster file and the key without flags (src/cli/defaults.ts):
// --config, then $FITB_CONFIG, then /etc/fitb/cluster.toml, then ./cluster.toml; --key,
// then $FITB_KEY; and a usage error that says what was tried.
import { describe, expect, test } from "bun:test";
import { resolveConfigPath, resolveKeyPath } from "../../src/cli/defaults.ts";
import { UsageError } from "../../src/cli/errors.ts";

const source = (env: Record<string, string>, files: string[] = []) => ({ env, exists: (path: string) => files.includes(path) });

describe("the cluster file", () => {
  test("--config wins over $FITB_CONFIG, which wins over the default paths", () => {
    const everything = source({ FITB_CONFIG: "/env.toml" }, ["/etc/fitb/cluster.toml", "./cluster.toml"]);
    expect(resolveConfigPath("/flag.toml", everything)).toBe("/flag.toml");
    expect(resolveConfigPath(undefined, everything)).toBe("/env.toml");
  });

  test("without either: /etc/fitb/cluster.toml, then ./cluster.toml", () => {
    expect(resolveConfigPath(undefined, source({}, ["/etc/fitb/cluster.toml", "./cluster.toml"]))).toBe("/etc/fitb/cluster.toml");
    expect(resolveConfigPath(undefined, source({ FITB_CONFIG: "" }, ["./cluster.toml"]))).toBe("./cluster.toml");
  });

  test("none at all is a usage error naming every way", () => {
    expect(() => resolveConfigPath(undefined, source({}))).toThrow(UsageError);
    expect(() => resolveConfigPath(undefined, source({}))).toThrow(
      "no cluster file: pass --config FILE, set FITB_CONFIG, or put it at /etc/fitb/cluster.toml or ./cluster.toml",
    );
  });
});

describe("the key", () => {
  test("--key wins over $FITB_KEY; neither is a usage error", () => {
    expect(resolveKeyPath("/flag.key", source({ FITB_KEY: "/env.key" }))).toBe("/flag.key");
    expect(resolveKeyPath(undefined, source({ FITB_KEY: "/env.key" }))).toBe("/env.key");
    expect(() => resolveKeyPath(undefined, source({}))).toThrow("no key file: pass --key FILE or set FITB_KEY");
  });
});
