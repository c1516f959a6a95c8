/**
 * # bench/rpc_bench.ts: how fast is the RPC pair, and what each part costs
 *
 * Measures the library, `rpc/mod.ts`: its Fibonacci layer (our server is
 * its command line, `rpc/fib_server.ts`; our client is `FibonacciRpcClient`)
 * and its generic layer (`RpcServer` with a handler on bytes,
 * `bench/generic_server.ts`, called by `RpcClient`). Starts servers as
 * separate processes, as users run them, drives them from clients in this
 * process (or in fresh processes where memory and start-up are measured),
 * and prints one Markdown table per question:
 *
 * 1. `throughput`: calls/s at 256 in flight, quorum and classic queue, ours
 *    (both layers) against raw amqplib pairs (`bench/raw.ts`) with the same
 *    AMQP features, with none, and with each feature alone, so each one's
 *    price shows;
 * 2. `own-code`: ours against the raw pair that differs from it only by our
 *    code (same features, writes coalesced as ours are), the two alone;
 * 3. `sequential`: one call at a time, ours, raw and a pika pair;
 * 4. `memory`: client RSS over 100,000 pipelined calls, ours and raw;
 * 5. `cold`: `deno run -A rpc/fib_client.ts 30` against a Python pika client,
 *    and where a cold run's time goes;
 * 6. `recovery`: how soon an overloaded server answers a fresh call after a
 *    burst of calls with short deadlines, skipping late requests or not;
 * 7. `prefetch`: throughput for fast work and total time for uneven work;
 * 8. `tracing`: what OpenTelemetry costs: our pair with `OTEL_DENO=true` in
 *    both processes against our pair without it, each client in a fresh
 *    process, spans going to a small OTLP/HTTP receiver in this process;
 *    and the cost of `startCallSpan` with tracing off, per call;
 * 9. `rabbitmq-client`: ours against npm rabbitmq-client, server and client,
 *    through its own RPC API: an I/O-bound handler (awaits 10 ms, 50 at
 *    once), 256 in flight with fib(1), and one call at a time.
 *
 * Tracing is off everywhere else: the processes it starts get no `OTEL_*`
 * variable (except the tracing measurement's "on" pair), and the header says
 * whether this process traces (it does if started with `OTEL_DENO=true`).
 *
 * Every figure comes from paired, interleaved turns (each turn runs every
 * contender once, in a rotating order), reported as the median with the
 * spread (min–max) of the turns; a ratio is the median of per-turn ratios.
 *
 * ```sh
 * deno task bench                         # everything, about 15 minutes on a quiet machine
 * deno task bench --quick                 # fewer and shorter turns, about 3 minutes
 * deno task bench --only throughput,cold  # some measurements
 * deno task bench --only rabbitmq-client # ours against npm rabbitmq-client
 * deno task bench --json                  # the figures as JSON instead of tables
 * deno run -A bench/rpc_bench.ts --help
 * ```
 *
 * Permissions: `-A` (network to the broker, subprocesses, environment,
 * temporary files, `Deno.memoryUsage`). It talks to a broker on this machine
 * only (`--url` or `$AMQP_URL` must name a loopback host). Every loop is
 * bounded in calls and in time; every queue it declares is deleted, every
 * process it starts is stopped by its PID, and its temporary files are
 * removed, also on Ctrl-C.
 *
 * This file is the command line and `main`; each measurement lives in a
 * file of its own (`throughput.ts`, `sequential.ts`, `memory.ts`, `cold.ts`,
 * `recovery.ts`, `prefetch.ts`, `tracing.ts`, `against_rabbitmq_client.ts`), the rest in files by concern
 * (see bench/README.md).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { againstRabbitmqClient } from "./against_rabbitmq_client.ts";
import { coldStart } from "./cold.ts";
import { RABBITMQ_CLIENT } from "./rabbitmq_client.ts";
import { Lab } from "./lab.ts";
import { memory } from "./memory.ts";
import { prefetch } from "./prefetch.ts";
import { probe } from "./processes.ts";
import { recovery } from "./recovery.ts";
import { say, setQuiet } from "./report.ts";
import { sequentialLatency } from "./sequential.ts";
import { type Measurement, MEASUREMENTS, plan, PYTHON, type Settings } from "./settings.ts";
import { ownCode, throughput } from "./throughput.ts";
import { tracing, tracingHere } from "./tracing.ts";
import { targetsTable, verdicts } from "./verdicts.ts";

const USAGE = `Usage: deno run -A bench/rpc_bench.ts [options]   (or: deno task bench [options])

Benchmarks the RPC pair against raw amqplib, a Python pika pair and npm rabbitmq-client;
prints Markdown tables.

Options:
  --quick          fewer and shorter turns (about 3 minutes instead of 15)
  --only LIST      comma-separated measurements: ${MEASUREMENTS.join(",")}
  --json           print the figures as JSON instead of tables
  --no-python      skip the Python pika rows
  --url URL        broker, on this machine (default: $AMQP_URL, else amqp://127.0.0.1)
  -h, --help       show this help`;

/** Reads the command line; a bad one is a one-line error (exit 2), --help the usage (exit 0). */
function settingsFrom(args: string[]): Settings {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        quick: { type: "boolean", default: false },
        json: { type: "boolean", default: false },
        "no-python": { type: "boolean", default: false },
        only: { type: "string" },
        url: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (error) {
    fail((error as Error).message);
  }
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const only = (values.only?.split(",") ?? [...MEASUREMENTS]) as Measurement[];
  const unknown = only.filter((name) => !MEASUREMENTS.includes(name));
  if (unknown.length) {
    fail(`unknown measurement "${unknown[0]}"; choose from ${MEASUREMENTS.join(",")}`);
  }
  const url = values.url ?? Deno.env.get("AMQP_URL") ?? "amqp://127.0.0.1";
  let host = "";
  try {
    host = new URL(url).hostname;
  } catch { /* reported below */ }
  if (!/^(127\.\d+\.\d+\.\d+|localhost|\[::1\])$/.test(host)) {
    fail(`--url must be an amqp:// URL of a broker on this machine (loopback), got "${url}"`);
  }
  return {
    url,
    quick: values.quick,
    json: values.json,
    python: !values["no-python"],
    only,
    plan: plan(values.quick),
  };
}

/** Prints `message` as a command-line error and exits 2. */
function fail(message: string): never {
  console.error(`rpc_bench: ${message} (see --help)`);
  Deno.exit(2);
}

/** The header's line about this machine: date, cores, memory, OS, broker, Deno, Python. */
async function describeMachine(lab: Lab): Promise<string> {
  const version = "import sys, pika; print(sys.version.split()[0], pika.__version__)";
  const pika = lab.python.pika
    ? (await probe(PYTHON, ["-c", version])).replace(" ", ", pika ")
    : "no pika";
  const os = await Deno.readTextFile("/etc/debian_version").then(
    (v) => `Debian ${v.trim()}`,
    () => Deno.build.os,
  );
  return `${new Date().toISOString().slice(0, 16)}Z; ${navigator.hardwareConcurrency} cores, ` +
    `${
      (Deno.systemMemoryInfo().total / 2 ** 30).toFixed(0)
    } GiB, ${os}; RabbitMQ ${lab.brokerVersion} ` +
    `on this machine; Deno ${Deno.version.deno}; amqplib 2.3.1; ${RABBITMQ_CLIENT}; ` +
    `Python ${pika}`;
}

/** Runs the measurements `settings` asks for, one after another, and prints what they found. */
async function main(settings: Settings): Promise<void> {
  setQuiet(settings.json);
  const measures: Record<Measurement, (lab: Lab) => Promise<unknown>> = {
    throughput,
    "own-code": ownCode,
    sequential: sequentialLatency,
    memory,
    cold: coldStart,
    recovery,
    prefetch,
    tracing,
    "rabbitmq-client": againstRabbitmqClient,
  };
  const lab = await Lab.open(settings);
  const interrupt = () => {
    console.error("rpc_bench: interrupted; stopping servers and deleting queues");
    lab.close().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", interrupt);
  const began = performance.now();
  const results: Record<string, unknown> = { machine: await describeMachine(lab) };
  const failures: string[] = [];
  try {
    say(`rpc_bench ${Deno.args.join(" ")}`.trim());
    say(results.machine as string);
    say(tracingHere());
    if (settings.python && !lab.python.pika) {
      say("(no python3-pika at /usr/bin/python3: no Python rows)");
    }
    for (const name of settings.only) {
      // One measurement failing (a shared, busy broker) does not lose the others.
      results[name] = await measures[name](lab).catch((error: Error) => {
        failures.push(`${name}: ${error.message}`);
        say(`\n${name}: FAILED: ${error.message}`);
        return { failed: error.message };
      });
    }
    targetsTable();
    say(`\nTook ${((performance.now() - began) / 1000).toFixed(0)} s.`);
  } finally {
    Deno.removeSignalListener("SIGINT", interrupt);
    await lab.close();
  }
  if (settings.json) console.log(JSON.stringify({ ...results, verdicts }, null, 2));
  if (failures.length) throw new Error(`failed: ${failures.join("; ")}`);
}

if (import.meta.main) {
  await main(settingsFrom(Deno.args)).catch((error) => {
    console.error(`rpc_bench: ${error instanceof Error ? error.message : error}`);
    Deno.exit(1);
  });
}
