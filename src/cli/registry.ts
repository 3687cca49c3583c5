/**
 * Every `fitb` command, in the order `fitb --help` lists them. Adding a command is
 * one file under commands/ and one line here.
 */
import type { Command } from "./command.ts";
import { clusterExportCommand } from "./commands/cluster-export.ts";
import { clusterInitCommand } from "./commands/cluster-init.ts";
import { configCheckCommand } from "./commands/config-check.ts";
import { keygenCommand } from "./commands/keygen.ts";
import { replicaCommand } from "./commands/replica.ts";
import { serviceUnitCommand } from "./commands/service.ts";
import { pubCommand } from "./commands/pub.ts";
import { subCommand } from "./commands/sub.ts";
import { adminCommand } from "./commands/admin.ts";
import { benchCommand } from "./commands/bench.ts";
import { relayCommand } from "./commands/relay.ts";
import { demoCommand } from "./commands/demo.ts";
import { topCommand } from "./commands/top.ts";
import { consoleCommand } from "./commands/console.ts";

export const COMMANDS: readonly Command[] = [
  keygenCommand,
  clusterInitCommand,
  clusterExportCommand,
  configCheckCommand,
  replicaCommand,
  serviceUnitCommand,
  pubCommand,
  subCommand,
  adminCommand,
  topCommand,
  consoleCommand,
  benchCommand,
  relayCommand,
  demoCommand,
];
