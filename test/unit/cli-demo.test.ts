// What `fitb demo` prints beside its cluster: the admin console's port follows the ports
// given (not a fixed 7501), and the warning when a replica exits says whether the group
// still orders and how to start the replica again.
import { describe, expect, test } from "bun:test";
import { adminConsolePort, replicaExitWarning } from "../../src/cli/commands/demo-notes.ts";
import { PORT_MAX } from "../../src/config/cluster.ts";

describe("the admin console port printed by the demo", () => {
  test("is the port after the demo's console", () => {
    expect(adminConsolePort(7500, [7100, 7101, 7102, 7103, 7400])).toBe(7501);
    expect(adminConsolePort(27500, [28100, 28101, 28102, 28103, 28400])).toBe(27501);
  });

  test("skips the ports the demo itself listens on", () => {
    expect(adminConsolePort(7399, [7400, 7401, 7100])).toBe(7402);
  });

  test("goes below the console port at the top of the range", () => {
    expect(adminConsolePort(PORT_MAX, [PORT_MAX - 1])).toBe(PORT_MAX - 2);
  });
});

describe("the warning when a replica exits", () => {
  const restart = "fitb replica --config demo/cluster.toml --id 2 --urgent-delay-target-ms 2";
  const base = { how: "was stopped by SIGKILL", log: "demo/replica-2.log", n: 4, f: 1, restart };

  test("the first exit: the cluster goes on; how to start the replica again", () => {
    const line = replicaExitWarning({ ...base, id: 2, exited: [2] });
    expect(line).toBe(
      "fitb demo: warning: replica 2 was stopped by SIGKILL (see demo/replica-2.log); the cluster tolerates 1 failed replica (f=1) " +
        `and goes on with 3 of 4; start it again in another shell (it rejoins the group; the demo does not follow it then, and Ctrl-C here does not stop it): ${restart}`,
    );
  });

  test("the second exit with f=1: the quorum for ordering is lost; how to start the replica again", () => {
    const line = replicaExitWarning({ ...base, id: 3, exited: [2, 3], how: "exited with code 1", log: "demo/replica-3.log" });
    expect(line).toStartWith("fitb demo: warning: replica 3 exited with code 1 (see demo/replica-3.log); replicas 2, 3 have exited");
    expect(line).toContain("it has lost its quorum for ordering (3 of 4 replicas), so total-order channels and admin commands stop");
    expect(line).toContain("until one of them runs again");
    expect(line).not.toContain("tolerates 1 failed replica (f=1) and goes on");
    expect(line).toEndWith(
      `start it again in another shell (it rejoins the group; the demo does not follow it then, and Ctrl-C here does not stop it): ${restart}`,
    );
  });

  test("beyond that, it says how many must come back", () => {
    expect(replicaExitWarning({ ...base, id: 1, exited: [2, 3, 1] })).toContain("until 2 of them run again");
  });

  test("with f=2 the second exit is still tolerated", () => {
    expect(replicaExitWarning({ ...base, id: 3, exited: [2, 3], n: 7, f: 2 })).toContain(
      "the cluster tolerates 2 failed replicas (f=2) and goes on with 5 of 7",
    );
  });
});
