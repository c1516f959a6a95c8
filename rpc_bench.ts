/**
 * # rpc_bench.ts: how fast is the RPC pair, measured the way users feel it
 *
 * Starts servers as separate processes (as users run them), drives them from
 * a client in this process, and prints one table per question:
 *
 * 1. sequential latency of fib(1): ours, a raw amqplib baseline, and the
 *    official Python tutorial pair (interop/*.py, if python3-pika is there);
 * 2. pipelined throughput at concurrency 1, 16, 64 and 256, with 1 and 2
 *    servers, per queue type and prefetch, beside the raw baseline;
 * 3. prefetch: fast work (throughput) against uneven work (fair dispatch);
 * 4. client memory before and after 100k calls;
 * 5. cold start: `deno run -A rpc_client.ts 30` against the Python client.
 *
 * The raw baseline is the same publish/consume/reply loop written straight
 * against amqplib, with no validation, logging, timers or bookkeeping, so our
 * overhead reads as a ratio.
 *
 * ```sh
 * deno task bench            # full run, a few minutes
 * deno task bench --quick    # fewer calls, for a smoke test
 * deno task bench --json     # the figures as JSON
 * ```
 *
 * Permissions: `-A` (network, subprocesses, environment, `Deno.memoryUsage`).
 * Every loop is bounded by a call count; every queue it declares is deleted
 * and every process it starts is stopped, by its PID, before it exits.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import amqp from "npm:amqplib@^2.3.1";
import type { Channel, ChannelModel } from "npm:amqplib@^2.3.1";
import { FibonacciRpcClient } from "./rpc_client.ts";
import { DEFAULT_PREFETCH } from "./rpc_server.ts";

const URL = Deno.env.get("AMQP_URL") ?? "amqp://localhost";
const PYTHON = "/usr/bin/python3"; // Debian's, which python3-pika installs into
const here = (file: string) => new globalThis.URL(file, import.meta.url).pathname;

type QueueType = "quorum" | "classic";
type Call = (n: number) => Promise<unknown>;

// --- the raw baseline ------------------------------------------------------

/** The baseline server: consume, compute, reply, ack. Nothing else. */
async function rawServer(queue: string, prefetch: number): Promise<never> {
  const connection = await amqp.connect(URL, { noDelay: true });
  const channel = await connection.createChannel();
  await channel.prefetch(prefetch);
  await channel.consume(queue, (message) => {
    if (!message) return;
    let previous = 0n, current = 1n;
    for (let i = Number(message.content.toString()); i > 0; i--) {
      [previous, current] = [current, previous + current];
    }
    channel.sendToQueue(message.properties.replyTo, Buffer.from(String(previous)), {
      correlationId: message.properties.correlationId,
    });
    channel.ack(message);
  });
  console.log(" [x] Awaiting RPC requests");
  return await new Promise<never>(() => {}); // until the benchmark kills us
}

/** The baseline client: direct reply-to, a map of resolvers, nothing else. */
async function rawClient(queue: string) {
  const connection = await amqp.connect(URL, { noDelay: true });
  const channel = await connection.createChannel();
  const pending = new Map<string, (body: string) => void>();
  await channel.consume("amq.rabbitmq.reply-to", (message) => {
    const resolve = message && pending.get(message.properties.correlationId);
    if (!resolve) return;
    pending.delete(message!.properties.correlationId);
    resolve(message!.content.toString());
  }, { noAck: true });
  const call: Call = (n) =>
    new Promise((resolve) => {
      const correlationId = crypto.randomUUID();
      pending.set(correlationId, resolve);
      channel.sendToQueue(queue, Buffer.from(String(n)), {
        correlationId,
        replyTo: "amq.rabbitmq.reply-to",
      });
    });
  return { call, close: () => connection.close() };
}

// --- processes and queues ----------------------------------------------------

/** An admin connection: declares, watches and deletes the benchmark's queues. */
class Broker {
  readonly queues: string[] = [];
  readonly types = new Map<string, QueueType>();
  private constructor(readonly connection: ChannelModel, readonly channel: Channel) {}

  static async open(): Promise<Broker> {
    const connection = await amqp.connect(URL);
    const channel = await connection.createChannel();
    return new Broker(connection, channel);
  }

  async declare(type: QueueType | "python"): Promise<string> {
    const queue = `rpc_bench.${crypto.randomUUID()}`;
    this.queues.push(queue);
    if (type !== "python") this.types.set(queue, type);
    if (type === "quorum") {
      await this.channel.assertQueue(queue, {
        durable: true,
        arguments: { "x-queue-type": "quorum" },
      });
    } else if (type === "classic") {
      await this.channel.assertQueue(queue, { durable: false }); // as the tutorials do
    } // "python": the tutorial's server declares its own queue
    return queue;
  }

  /** Waits, up to 30 s, until `count` consumers are on the queue. */
  async consumers(queue: string, count: number): Promise<void> {
    for (let tries = 0; tries < 600; tries++) {
      // A channel per look: a queue not declared yet (404) closes it.
      const channel = await this.connection.createChannel();
      channel.on("error", () => {});
      const found = await channel.checkQueue(queue).catch(() => ({ consumerCount: -1 }));
      await channel.close().catch(() => {});
      if (found.consumerCount >= count) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(`no ${count} consumer(s) on ${queue} after 30 s`);
  }

  async close(): Promise<void> {
    for (const queue of this.queues) await this.channel.deleteQueue(queue);
    await this.connection.close();
  }
}

type ServerKind = "ours" | "raw" | "python";

/** Starts `count` server processes on `queue`; the result stops them. */
async function startServers(
  broker: Broker,
  kind: ServerKind,
  queue: string,
  count: number,
  prefetch = DEFAULT_PREFETCH,
) {
  const children: Deno.ChildProcess[] = [];
  for (let i = 0; i < count; i++) {
    const [command, args] = kind === "python"
      ? [PYTHON, [here("interop/rpc_server.py")]]
      : [Deno.execPath(), [
        "run",
        "-A",
        ...(kind === "ours"
          ? [here("rpc_server.ts"), "--quiet", "--queue", queue, "--prefetch", String(prefetch)]
            .concat(["--queue-type", broker.types.get(queue) ?? "quorum"])
          : [here("rpc_bench.ts"), "--raw-server", queue, "--prefetch", String(prefetch)]),
      ]];
    children.push(
      new Deno.Command(command, {
        args,
        env: { RPC_QUEUE: queue, AMQP_URL: URL },
        stdin: "null",
        stdout: "null",
        stderr: "inherit",
      }).spawn(),
    );
    // Python's server declares the queue itself: wait before starting the next.
    await broker.consumers(queue, i + 1);
  }
  return {
    async stop() {
      for (const child of children) {
        try {
          child.kill("SIGTERM");
        } catch { /* already gone */ }
      }
      await Promise.all(children.map((child) => child.status));
    },
  };
}

// --- measurements ------------------------------------------------------------

function median(values: number[]): number {
  return percentile(values.toSorted((a, b) => a - b), 50);
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

interface Latency {
  p50: number;
  p99: number;
  mean: number;
  callsPerSecond: number;
}

function summarize(samples: number[]): Latency {
  const sorted = samples.toSorted((a, b) => a - b);
  const total = samples.reduce((sum, ms) => sum + ms, 0);
  return {
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    mean: total / samples.length,
    callsPerSecond: 1000 * samples.length / total,
  };
}

async function sequential(call: Call, calls: number): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < calls; i++) {
    const started = performance.now();
    await call(1);
    samples.push(performance.now() - started);
  }
  return samples;
}

/** Keeps `concurrency` calls in flight until `calls` are done; returns calls/s. */
async function pipelined(call: Call, concurrency: number, calls: number, n = () => 1) {
  let started = 0;
  const began = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (started < calls) {
      started++;
      await call(n());
    }
  }));
  return {
    callsPerSecond: (1000 * calls) / (performance.now() - began),
    ms: performance.now() - began,
  };
}

/** The Python tutorial client, timed in its own process over `calls` calls. */
async function pythonSequential(queue: string, calls: number): Promise<Latency> {
  const code = `
import json, sys, time
sys.path.insert(0, ${JSON.stringify(here("interop"))})
from rpc_client import FibonacciRpcClient
client = FibonacciRpcClient()
for _ in range(min(200, ${calls})): client.call(1)
samples = []
for _ in range(${calls}):
    started = time.perf_counter()
    client.call(1)
    samples.append((time.perf_counter() - started) * 1000)
print(json.dumps(samples))`;
  const output = await new Deno.Command(PYTHON, {
    args: ["-c", code],
    env: { RPC_QUEUE: queue, AMQP_URL: URL },
    stdout: "piped",
    stderr: "inherit",
    signal: AbortSignal.timeout(300_000),
  }).output();
  if (!output.success) throw new Error("the Python tutorial client failed");
  return summarize(JSON.parse(new TextDecoder().decode(output.stdout)));
}

/** Wall time of whole commands, interleaved so both see the same noise. */
async function coldStarts(
  commands: Record<string, [string, string[]]>,
  runs: number,
  env: Record<string, string>,
) {
  const times: Record<string, number[]> = Object.fromEntries(
    Object.keys(commands).map((k) => [k, []]),
  );
  for (let i = 0; i < runs + 2; i++) {
    for (const [name, [command, args]] of Object.entries(commands)) {
      const started = performance.now();
      const output = await new Deno.Command(command, {
        args,
        env,
        stdout: "null",
        stderr: "null",
        signal: AbortSignal.timeout(30_000),
      }).output();
      if (!output.success) throw new Error(`${name} failed`);
      if (i >= 2) times[name].push(performance.now() - started); // two warm-ups
    }
  }
  return Object.fromEntries(
    Object.entries(times).map(([name, samples]) => [name, summarize(samples)]),
  );
}

async function pythonAvailable(): Promise<boolean> {
  try {
    const output = await new Deno.Command(PYTHON, {
      args: ["-c", "import pika"],
      stdout: "null",
      stderr: "null",
    }).output();
    return output.success;
  } catch {
    return false;
  }
}

// --- the run -----------------------------------------------------------------

const fixed = (value: number, digits = 2) => value.toFixed(digits);
const round = (value: number) => Math.round(value).toLocaleString("en-US");

function table(title: string, header: string[], rows: (string | number)[][]): void {
  const cells = [header, ...rows.map((row) => row.map(String))];
  const widths = header.map((_, i) => Math.max(...cells.map((row) => row[i].length)));
  console.log(`\n${title}`);
  for (const [index, row] of cells.entries()) {
    console.log(
      row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]))).join(
        "  ",
      ),
    );
    if (index === 0) console.log(widths.map((width) => "-".repeat(width)).join("  "));
  }
}

async function main(quick: boolean, json: boolean, withPython: boolean) {
  const log = json ? () => {} : console.log;
  const sequentialCalls = quick ? 300 : 3000;
  const pipelinedCalls = quick ? 1000 : 5000;
  const rounds = quick ? 1 : 5;
  const memoryCalls = quick ? 10_000 : 100_000;
  const results: Record<string, unknown> = {
    machine: `${navigator.hardwareConcurrency} cores, ${Deno.build.os}/${Deno.build.arch}, ` +
      `Deno ${Deno.version.deno}, RabbitMQ at ${URL.replace(/:[^:@/]*@/, ":***@")}`,
  };
  log(`rpc_bench: ${results.machine}${quick ? " (quick)" : ""}`);
  const broker = await Broker.open();
  try {
    // 1 and 2. For each queue type and server count, our servers and the
    // baseline's run side by side on queues of their own, and the clients
    // take turns, so all see the same noise; a throughput figure is the
    // median of `rounds` turns, a latency the percentiles of all turns.
    const concurrencies = [1, 16, 64, 256];
    const latency: Record<string, Latency> = {};
    const throughput: Record<string, Record<string, number>> = {};
    const c256Ratios: Record<string, number[]> = {};
    for (const type of ["quorum", "classic"] as const) {
      for (const serverCount of [1, 2]) {
        const oursQueue = await broker.declare(type);
        const rawQueue = await broker.declare(type);
        const servers = [
          await startServers(broker, "ours", oursQueue, serverCount),
          await startServers(broker, "raw", rawQueue, serverCount),
        ];
        const clients: Record<string, { call: Call; close(): Promise<void> }> = {
          ours: await FibonacciRpcClient.connect({ url: URL, queue: oursQueue }),
          "ours, exclusive reply queue": await FibonacciRpcClient.connect({
            url: URL,
            queue: oursQueue,
            replyQueue: "exclusive",
          }),
          raw: await rawClient(rawQueue),
        };
        for (const client of Object.values(clients)) {
          await pipelined((n) => client.call(n), 64, 1000); // warm up
        }
        if (serverCount === 1) {
          const samples: Record<string, number[]> = {};
          for (let round = 0; round < rounds; round++) {
            for (const [name, client] of Object.entries(clients)) {
              samples[name] = (samples[name] ?? []).concat(
                await sequential((n) => client.call(n), Math.ceil(sequentialCalls / rounds)),
              );
            }
          }
          for (const [name, times] of Object.entries(samples)) {
            latency[`${name} (${type})`] = summarize(times);
          }
        }
        const rates: Record<string, Record<string, number[]>> = {};
        for (const concurrency of concurrencies) {
          const calls = concurrency === 1 ? Math.min(500, pipelinedCalls) : pipelinedCalls;
          for (let round = 0; round < rounds; round++) {
            for (const [name, client] of Object.entries(clients)) {
              const { callsPerSecond } = await pipelined((n) => client.call(n), concurrency, calls);
              ((rates[name] ??= {})[`C=${concurrency}`] ??= []).push(callsPerSecond);
            }
          }
        }
        const ours = rates["ours"]["C=256"];
        c256Ratios[`${type}, ${serverCount} server${serverCount > 1 ? "s" : ""}`] = ours.map(
          (rate, turn) => rate / rates["raw"]["C=256"][turn],
        );
        for (const client of Object.values(clients)) await client.close();
        for (const server of servers) await server.stop();
        for (const [name, byConcurrency] of Object.entries(rates)) {
          throughput[`${name}, ${type}, ${serverCount} server${serverCount > 1 ? "s" : ""}`] =
            Object
              .fromEntries(
                Object.entries(byConcurrency).map(([c, values]) => [c, median(values)]),
              );
        }
      }
    }
    if (withPython) {
      const queue = await broker.declare("python");
      const servers = await startServers(broker, "python", queue, 1);
      latency["python tutorial (classic)"] = await pythonSequential(queue, sequentialCalls);
      await servers.stop();
    }
    results.sequential = latency;
    table(
      `Sequential fib(1), ${sequentialCalls} calls, one server (ms)`,
      ["pair", "p50", "p99", "mean", "calls/s"],
      Object.entries(latency).map(([name, l]) => [
        name,
        fixed(l.p50, 3),
        fixed(l.p99, 3),
        fixed(l.mean, 3),
        round(l.callsPerSecond),
      ]),
    );
    const python = latency["python tutorial (classic)"];
    if (python) {
      results.oursP50OverPython = {
        quorum: latency["ours (quorum)"].p50 / python.p50,
        classic: latency["ours (classic)"].p50 / python.p50,
      };
      log(
        `ours / python tutorial, sequential p50: quorum ${
          fixed(latency["ours (quorum)"].p50 / python.p50)
        }, ` +
          `classic ${fixed(latency["ours (classic)"].p50 / python.p50)}`,
      );
    }
    results.throughput = throughput;
    table(
      `Pipelined fib(1), calls/s over one client, prefetch ${DEFAULT_PREFETCH} ` +
        `(median of ${rounds} turns of ${pipelinedCalls} calls)`,
      ["client, queue type, servers", ...concurrencies.map((c) => `C=${c}`)],
      Object.entries(throughput).map(([name, row]) => [
        name,
        ...concurrencies.map((c) => round(row[`C=${c}`])),
      ]),
    );
    // Each turn's ours/raw ratio, then their median: paired turns cancel
    // most of the drift that unpaired medians would keep.
    const ratios: Record<string, number> = {};
    for (const [key, value] of Object.entries(c256Ratios)) ratios[key] = median(value);
    results.oursOverRawAtC256 = ratios;
    log(
      "ours / raw at C=256 (median of paired turns): " +
        Object.entries(ratios).map(([name, ratio]) => `${name} ${fixed(ratio)}`).join("; "),
    );

    // 3. Prefetch: throughput for fast work, makespan for uneven work.
    const prefetchRows: (string | number)[][] = [];
    const prefetchResults: Record<string, Record<string, number>> = {};
    const uneven = (() => {
      let i = 0;
      return () => (i++ % 2 === 0 ? 10_000 : 1); // fib(10000) takes ~1 ms, fib(1) ~0
    })();
    for (const prefetch of [1, 10, 50, 250]) {
      const queue = await broker.declare("quorum");
      const servers = await startServers(broker, "ours", queue, 2, prefetch);
      await using client = await FibonacciRpcClient.connect({ url: URL, queue });
      const call: Call = (n) => client.call(n);
      await pipelined(call, 64, 500);
      const fast = await pipelined(call, 256, pipelinedCalls);
      const slow = await pipelined(call, 256, quick ? 200 : 1000, uneven);
      await servers.stop();
      prefetchResults[`prefetch ${prefetch}`] = {
        fastCallsPerSecond: fast.callsPerSecond,
        unevenMs: slow.ms,
      };
      prefetchRows.push([`prefetch ${prefetch}`, round(fast.callsPerSecond), round(slow.ms)]);
    }
    results.prefetch = prefetchResults;
    table(
      "Prefetch, 2 servers, C=256: fast fib(1) calls/s; uneven work (fib(10000) and fib(1) alternating) total ms",
      ["server prefetch", "fast calls/s", "uneven ms"],
      prefetchRows,
    );

    // 4. Client memory over many calls.
    {
      const queue = await broker.declare("quorum");
      const servers = await startServers(broker, "ours", queue, 1);
      const client = await FibonacciRpcClient.connect({ url: URL, queue });
      const call: Call = (n) => client.call(n);
      await pipelined(call, 256, 5_000);
      const gc = (globalThis as { gc?: () => void }).gc;
      gc?.();
      const before = Deno.memoryUsage();
      await pipelined(call, 256, memoryCalls);
      gc?.();
      const after = Deno.memoryUsage();
      const memory = {
        calls: memoryCalls,
        rssBeforeMiB: before.rss / 2 ** 20,
        rssAfterMiB: after.rss / 2 ** 20,
        heapBeforeMiB: before.heapUsed / 2 ** 20,
        heapAfterMiB: after.heapUsed / 2 ** 20,
        pendingCallsAfter: client.pendingCalls,
        gcForced: gc !== undefined,
      };
      await client.close();
      await servers.stop();
      results.memory = memory;
      table(
        `Client memory around ${round(memoryCalls)} calls at C=256 (MiB)${
          gc ? "" : " (no forced GC)"
        }`,
        ["", "RSS", "heap used"],
        [
          ["before", fixed(memory.rssBeforeMiB, 1), fixed(memory.heapBeforeMiB, 1)],
          ["after", fixed(memory.rssAfterMiB, 1), fixed(memory.heapAfterMiB, 1)],
          ["pending calls after", memory.pendingCallsAfter, ""],
        ],
      );
    }

    // 5. Cold start of one call, end to end, against one of our servers.
    {
      const queue = await broker.declare("quorum");
      const servers = await startServers(broker, "ours", queue, 1);
      const commands: Record<string, [string, string[]]> = {
        "deno run -A rpc_client.ts 30": [Deno.execPath(), [
          "run",
          "-A",
          here("rpc_client.ts"),
          "--queue",
          queue,
          "30",
        ]],
      };
      if (withPython) {
        commands["python3 interop/rpc_client.py 30"] = [PYTHON, [
          here("interop/rpc_client.py"),
          "30",
        ]];
      }
      const cold = await coldStarts(commands, quick ? 5 : 20, { RPC_QUEUE: queue, AMQP_URL: URL });
      await servers.stop();
      results.coldStart = cold;
      table(
        "Cold start: one call from a new process, wall time (ms)",
        ["command", "p50", "mean", "p99"],
        Object.entries(cold).map((
          [name, l],
        ) => [name, fixed(l.p50, 1), fixed(l.mean, 1), fixed(l.p99, 1)]),
      );
    }
  } finally {
    await broker.close();
  }
  if (json) console.log(JSON.stringify(results, null, 2));
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean" },
      json: { type: "boolean" },
      "no-python": { type: "boolean" },
      "raw-server": { type: "string" },
      prefetch: { type: "string" },
    },
  });
  if (values["raw-server"]) {
    await rawServer(values["raw-server"], Number(values.prefetch ?? DEFAULT_PREFETCH));
  }
  const withPython = !values["no-python"] && await pythonAvailable();
  if (!withPython && !values["no-python"]) {
    console.error(
      "rpc_bench: no python3-pika at /usr/bin/python3; skipping the Python tutorial pair",
    );
  }
  await main(values.quick ?? false, values.json ?? false, withPython);
}
