/**
 * # bench/cold.ts: one call from a new process
 *
 * Whole commands timed from spawn to exit against a running server: our
 * command line `rpc/fib_client.ts`, the Python peer client, and stamped
 * versions (`bench/child.ts cold` and `cold-raw`, the pika cold call of
 * `bench/pika.ts`) that show where a cold run's time goes.
 *
 * @module
 */
import type { Lab } from "./lab.ts";
import { interleaved } from "./loops.ts";
import { PIKA_COLD } from "./pika.ts";
import { childCommand, denoRun, run, stdoutOf } from "./processes.ts";
import { fixed, say, show, table } from "./report.ts";
import { PYTHON } from "./settings.ts";
import { mapValues, ratio, spread } from "./stats.ts";

/** One cold run: wall time, and the child's phase stamps if it prints them. */
async function coldRun(command: string, args: string[], env: Record<string, string>) {
  const spawned = performance.timeOrigin + performance.now();
  const output = await run(command, args, 30_000, env);
  const ended = performance.timeOrigin + performance.now();
  const text = stdoutOf(`${command} ${args[0]}`, output);
  const stamps: [string, number][] = text.startsWith("[[") ? JSON.parse(text) : [];
  const phases: Record<string, number> = {};
  let previous = spawned;
  for (const [phase, at] of stamps) {
    phases[phase] = at - previous;
    previous = at;
  }
  if (stamps.length) phases["process exit"] = ended - previous;
  return { ms: ended - spawned, phases };
}

const CLI = "deno run -A rpc/fib_client.ts 30";
const PEER_CLIENT = "python3 interop/peer_client.py 30";

/** The cold-start commands, by name: ours, the stamped children, and the Python clients. */
function coldCommands(lab: Lab, queue: string): Record<string, [string, string[]]> {
  const child = (mode: string) => childCommand({ mode, url: lab.settings.url, queue });
  const commands: Record<string, [string, string[]]> = {
    [CLI]: denoRun("rpc/fib_client.ts", "--queue", queue, "30"),
    "deno run -A bench/child.ts cold (ours, stamped)": child("cold"),
    "deno run -A bench/child.ts cold-raw (amqplib, stamped)": child("cold-raw"),
  };
  if (lab.python.peerClient) {
    const args = ["interop/peer_client.py", "30", "--declare", "none", "--reply", "exclusive"];
    commands[PEER_CLIENT] = [PYTHON, args];
  } else {
    say("\n(no Python client row: interop/peer_client.py or python3-pika missing)");
  }
  if (lab.python.pika) commands["python3 -c <pika, stamped>"] = [PYTHON, ["-c", PIKA_COLD]];
  return commands;
}

/** 5. A cold `deno run -A rpc/fib_client.ts 30` against a Python pika client, and its phases. */
export async function coldStart(lab: Lab) {
  const { turns } = lab.settings.plan.cold;
  const { queue } = await lab.server({ kind: "ours", type: "quorum" });
  const env = { AMQP_URL: lab.settings.url, RPC_QUEUE: queue };
  const commands = coldCommands(lab, queue);
  const runs = await interleaved(
    turns + 1, // the first turn warms Deno's caches and the server; it is dropped below
    mapValues(commands, ([command, args]) => () => coldRun(command, args, env)),
  );
  for (const list of Object.values(runs)) list.shift();
  const wall = mapValues(runs, (list) => list.map((r) => r.ms));
  table(
    `Cold start: one call from a new process against a running server (quorum queue); wall ms, ` +
      `median (min–max) of ${turns} interleaved runs`,
    ["command", "wall ms"],
    Object.entries(wall).map(([name, ms]) => [name, show(spread(ms), fixed(1))]),
  );
  const results: Record<string, unknown> = { turns, wallMs: mapValues(wall, spread) };
  if (wall[PEER_CLIENT]) {
    const oursOverPython = results.oursOverPython = ratio(wall[CLI], wall[PEER_CLIENT]);
    say(`\nrpc/fib_client.ts / peer_client.py, cold, per turn: ${show(oursOverPython, fixed(2))}`);
  }
  for (const [name, list] of Object.entries(runs)) {
    if (list[0].phases["process exit"] === undefined) continue; // a command without stamps
    const phases = mapValues(
      list[0].phases,
      (_, phase) => spread(list.map((r) => r.phases[phase])),
    );
    table(
      `Where the time goes: ${name}; ms per phase, median (min–max)`,
      ["phase (ends when)", "ms"],
      Object.entries(phases).map(([phase, figure]) => [phase, show(figure, fixed(1))]),
    );
    results[name] = phases;
  }
  say(`\n"deno started": from spawn to the first statement of bench/child.ts (no static imports).`);
  return results;
}
