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
 *    and the cost of `startCallSpan` with tracing off, per call.
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
 * deno task bench                         # everything, about 5 minutes on a quiet machine
 * deno task bench --quick                 # fewer and shorter turns, under two minutes
 * deno task bench --only throughput,cold  # some measurements
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
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import amqp from "npm:amqplib@^2.3.1";
import type { Channel, ChannelModel } from "npm:amqplib@^2.3.1";
import { DEADLINE_GRACE_MS, DEFAULT_PREFETCH, FibonacciRpcClient, RpcClient } from "../rpc/mod.ts";
import { startCallSpan, tracingEnabled } from "../rpc/tracing.ts";
import { rawClient } from "./raw.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const PYTHON = "/usr/bin/python3"; // Debian's, which python3-pika installs into
const PREFETCH = DEFAULT_PREFETCH;
const MEASUREMENTS = [
  "throughput",
  "own-code",
  "sequential",
  "memory",
  "cold",
  "recovery",
  "prefetch",
  "tracing",
] as const;
type Measurement = typeof MEASUREMENTS[number];

const USAGE = `Usage: deno run -A bench/rpc_bench.ts [options]   (or: deno task bench [options])

Benchmarks the RPC pair against raw amqplib and a Python pika pair; prints Markdown tables.

Options:
  --quick          fewer and shorter turns (under two minutes instead of about 5)
  --only LIST      comma-separated measurements: ${MEASUREMENTS.join(",")}
  --json           print the figures as JSON instead of tables
  --no-python      skip the Python pika rows
  --url URL        broker, on this machine (default: $AMQP_URL, else amqp://127.0.0.1)
  -h, --help       show this help`;

/** How much of everything a run does; `--quick` takes the small column. */
function plan(quick: boolean) {
  const pick = (full: number, small: number) => (quick ? small : full);
  return {
    throughput: { turns: pick(13, 5), calls: pick(1_500, 800), concurrency: 256 },
    ownCode: { turns: pick(25, 7), calls: pick(3_000, 1_000) },
    sequential: { turns: pick(9, 3), calls: pick(200, 100) },
    memory: { turns: pick(2, 1), calls: pick(100_000, 20_000), concurrency: 256 },
    cold: { turns: pick(10, 4) },
    recovery: { turns: pick(5, 2), burst: 600, deadlineMs: 300, workMs: 20 },
    prefetch: { turns: pick(3, 1), fast: pick(2_000, 1_000), uneven: pick(500, 300) },
    tracing: {
      turns: pick(13, 5),
      calls: pick(3_000, 1_000),
      warmup: pick(1_000, 500),
      concurrency: 256,
      microIterations: 1_000_000,
      microRounds: pick(7, 3),
    },
  };
}

interface Settings {
  url: string;
  quick: boolean;
  json: boolean;
  python: boolean;
  only: Measurement[];
  plan: ReturnType<typeof plan>;
}

type QueueType = "quorum" | "classic";
type Call = (n: number) => Promise<unknown>;
interface Contender {
  call: Call;
  close(): Promise<void>;
}

// --- statistics and printing ------------------------------------------------

interface Spread {
  median: number;
  min: number;
  max: number;
  /**
   * A 95 % interval for the median, from the order statistics (no
   * assumption about the noise); NaN for fewer than 6 values, too few for one.
   */
  low: number;
  high: number;
}

function percentile(values: number[], p: number): number {
  const sorted = values.toSorted((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function spread(values: number[]): Spread {
  const sorted = values.toSorted((a, b) => a - b);
  const middle = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
  const k = sorted.length >= 6 ? medianIntervalRank(sorted.length) : NaN;
  return {
    median,
    min: sorted[0],
    max: sorted[sorted.length - 1],
    low: sorted[k] ?? NaN,
    high: sorted[sorted.length - 1 - k] ?? NaN,
  };
}

/**
 * Where the 95 % interval of a median starts, as a 0-based index into the
 * n sorted samples (it ends at the same distance from the top): the largest
 * i with P(X <= i) <= 2.5 % for X ~ Binomial(n, 1/2), the chance that fewer
 * than i + 1 samples fall below the true median: 2 for 13 samples (97.8 %).
 * From 6 samples up; below that even min to max covers less than 95 %.
 */
function medianIntervalRank(n: number): number {
  let atMost = 0; // P(X <= i)
  let exactly = 0.5 ** n; // P(X = i)
  let rank = 0;
  for (let i = 0; i < n / 2; i++) {
    atMost += exactly;
    if (atMost > 0.025) break;
    rank = i;
    exactly = (exactly * (n - i)) / (i + 1);
  }
  return rank;
}

/** Per-turn ratios a[i] / b[i], summarized: paired turns cancel shared drift. */
function ratio(a: number[], b: number[]): Spread {
  return spread(a.map((value, i) => value / b[i]));
}

/** `record` with `fn` applied to each value. */
function mapValues<T, U>(record: Record<string, T>, fn: (value: T, key: string) => U) {
  return Object.fromEntries(Object.entries(record).map(([key, value]) => [key, fn(value, key)]));
}

const int = (value: number) => Math.round(value).toLocaleString("en-US");
const fixed = (digits: number) => (value: number) => value.toFixed(digits);
const show = (s: Spread, format = int) => `${format(s.median)} (${format(s.min)}–${format(s.max)})`;
const interval = (s: Spread) =>
  Number.isNaN(s.low) ? "too few turns" : `${fixed(2)(s.low)}–${fixed(2)(s.high)}`;

let quiet = false; // --json: figures only

function say(line = ""): void {
  if (!quiet) console.log(line);
}

/** A Markdown table: the first column left-aligned, the others right-aligned. */
function table(title: string, header: string[], rows: string[][]): void {
  const cells = [header, ...rows];
  const widths = header.map((_, i) => Math.max(3, ...cells.map((row) => row[i].length)));
  const line = (row: string[]) =>
    `| ${
      row.map((cell, i) => (i ? cell.padStart(widths[i]) : cell.padEnd(widths[i]))).join(" | ")
    } |`;
  say(`\n${title}\n`);
  say(line(header));
  say(`| ${widths.map((w, i) => (i ? "-".repeat(w - 1) + ":" : "-".repeat(w))).join(" | ")} |`);
  for (const row of rows) say(line(row));
}

/** The verdicts, collected as measurements run and printed at the end. */
const verdicts: string[][] = [];

/**
 * Records a target's verdict by the median, as the targets are set, and
 * whether the median's 95 % interval lies wholly on that side: if not, the
 * verdict is within this run's noise, and another run may say otherwise.
 * With too few turns for an interval, the verdict stands alone.
 */
function verdict(target: string, figure: Spread, limit: number, atLeast: boolean): string {
  const passes = (value: number) => (atLeast ? value >= limit : value <= limit);
  const met = passes(figure.median);
  const known = !Number.isNaN(figure.low);
  const clear = !known || passes(figure.low) === met && passes(figure.high) === met;
  verdicts.push([
    target,
    show(figure, fixed(2)),
    interval(figure),
    (met ? "met" : "missed") + (clear ? "" : ", within noise"),
  ]);
  return met ? "met" : "missed";
}

// --- processes and queues ---------------------------------------------------

/**
 * What a server process runs. `ours` (rpc/fib_server.ts) and `generic`
 * (bench/generic_server.ts) log as shipped, their stdout going to a file.
 */
type ServerKind =
  | "ours"
  | "ours-quiet"
  | "generic"
  | "raw"
  | "raw-reply-connection"
  | "raw-coalesced"
  | "python"
  | "slow-skip-late"
  | "slow-no-skip-late";

interface ServerSpec {
  kind: ServerKind;
  type: QueueType;
  prefetch?: number;
  count?: number;
  /**
   * The tracing measurement's own servers: "on" with `OTEL_DENO=true` and
   * the OTLP variables of `Lab.otel`, "off" without (like every other).
   */
  tracing?: "off" | "on";
}

/** CPU ms: this process (the clients), the server processes, the broker. */
interface Cpu {
  client: number;
  server: number;
  broker: number;
}

interface Running {
  queue: string;
  children: Deno.ChildProcess[];
  log?: string;
}

/**
 * The broker connection the benchmark declares, watches and deletes its
 * queues with, and the processes and files it made, for cleaning up.
 */
class Lab {
  readonly #queues = new Set<string>();
  readonly #files = new Set<string>();
  readonly #servers = new Map<string, Running>();
  #closing: Promise<void> | undefined;
  /** The environment that turns tracing on, while the tracing measurement's receiver runs. */
  otel: Record<string, string> | undefined;

  private constructor(
    readonly settings: Settings,
    readonly connection: ChannelModel,
    readonly channel: Channel,
    readonly python: { pika: boolean; peerServer: boolean; peerClient: boolean },
    readonly clockTicks: number,
    readonly brokerPid: number | undefined,
  ) {}

  static async open(settings: Settings): Promise<Lab> {
    const connection = await amqp.connect(settings.url);
    connection.on("error", (error: Error) => console.error(`rpc_bench: broker: ${error.message}`));
    const channel = await connection.createChannel();
    const exists = (file: string) => Deno.stat(`${ROOT}${file}`).then(() => true, () => false);
    const pika = settings.python && (await run(PYTHON, ["-c", "import pika"], 10_000)).success;
    const text = async (command: string, args: string[]) =>
      new TextDecoder().decode((await run(command, args, 10_000).catch(() => null))?.stdout);
    const port = new URL(settings.url).port || "5672";
    const listener = await text("ss", ["-ltnpH", `sport = :${port}`]);
    return new Lab(
      settings,
      connection,
      channel,
      {
        pika,
        peerServer: pika && await exists("interop/peer_server.py"),
        peerClient: pika && await exists("interop/peer_client.py"),
      },
      Number(await text("getconf", ["CLK_TCK"])) || 100,
      Number(/pid=(\d+)/.exec(listener)?.[1]) || undefined,
    );
  }

  /** CPU ms used so far by this process, by the given server processes, and by the broker. */
  async cpu(pids: number[]): Promise<Cpu> {
    const { user, system } = process.cpuUsage();
    const of = async (pid: number) => {
      try {
        const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
        const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        return ((Number(fields[11]) + Number(fields[12])) * 1000) / this.clockTicks;
      } catch {
        return NaN; // not Linux, or the process is gone
      }
    };
    const servers = await Promise.all(pids.map(of));
    return {
      client: (user + system) / 1000,
      server: servers.reduce((sum, ms) => sum + ms, 0),
      broker: this.brokerPid ? await of(this.brokerPid) : NaN,
    };
  }

  get brokerVersion(): string {
    return String(this.connection.connection.serverProperties.version ?? "?");
  }

  /** A queue name of ours, deleted by close(); `declare` declares it as the tutorials do. */
  async queue(label: string, declare?: QueueType): Promise<string> {
    const queue = `rpc_bench.${label}.${crypto.randomUUID().slice(0, 8)}`;
    this.#queues.add(queue);
    if (declare === "quorum") {
      await this.channel.assertQueue(queue, {
        durable: true,
        arguments: { "x-queue-type": "quorum" },
      });
    } else if (declare === "classic") {
      await this.channel.assertQueue(queue, { durable: false });
    }
    return queue;
  }

  /** The servers for `spec`, started on a queue of their own the first time it is asked for. */
  async server(spec: ServerSpec): Promise<Running> {
    const key = JSON.stringify(spec);
    let running = this.#servers.get(key);
    if (running) return running;
    const count = spec.count ?? 1;
    const raw = spec.kind.startsWith("raw");
    // Raw servers do not declare; ours and Python's declare their own queue.
    const queue = await this.queue(`${spec.kind}.${spec.type}`, raw ? spec.type : undefined);
    running = { queue, children: [] };
    if (spec.kind === "ours" || spec.kind === "generic") {
      running.log = await Deno.makeTempFile({ prefix: "rpc_bench_server_", suffix: ".log" });
      this.#files.add(running.log);
    }
    // One after another: two servers declaring one new quorum queue at once
    // can crash the broker's channel (a 541 INTERNAL_ERROR on basic.consume).
    const env = { RPC_QUEUE: queue };
    if (spec.tracing === "on") {
      if (!this.otel) throw new Error("a tracing server needs the OTLP receiver running");
      Object.assign(env, this.otel);
    }
    for (let i = 0; i < count; i++) {
      const [command, args, stdout] = this.#serverCommand(spec, queue, running.log);
      running.children.push(this.spawn(command, args, env, stdout));
      await this.consumers(queue, i + 1, running.children);
    }
    this.#servers.set(key, running);
    return running;
  }

  #serverCommand(
    spec: ServerSpec,
    queue: string,
    log?: string,
  ): [string, string[], "null" | "piped"] {
    const prefetch = String(spec.prefetch ?? PREFETCH);
    const deno = (...args: string[]) => [Deno.execPath(), "run", "-A", ...args];
    const options = ["--url", this.settings.url, "--queue", queue, "--prefetch", prefetch];
    options.push("--queue-type", spec.type);
    const ours = ["rpc/fib_server.ts", ...options];
    // As shipped, logging on, stdout to a file; `exec` keeps the PID that of Deno.
    const logged = (args: string[]): [string, string[], "null"] => [
      "/bin/sh",
      ["-c", 'exec "$@" >"$0"', log!, ...deno(...args)],
      "null",
    ];
    switch (spec.kind) {
      case "ours":
        return logged(ours);
      case "ours-quiet":
        return [Deno.execPath(), deno(...ours, "--quiet").slice(1), "null"];
      case "generic":
        return logged(["bench/generic_server.ts", ...options]);
      case "raw":
      case "raw-reply-connection":
      case "raw-coalesced": {
        const args = deno("bench/raw.ts", "--url", this.settings.url, "--queue", queue);
        args.push("--prefetch", prefetch);
        if (spec.kind !== "raw") args.push("--reply-connection");
        if (spec.kind === "raw-coalesced") args.push("--coalesce");
        return [args[0], args.slice(1), "null"];
      }
      case "python":
        return [PYTHON, ["interop/peer_server.py", "--declare", spec.type], "null"];
      case "slow-skip-late":
      case "slow-no-skip-late": {
        const config = {
          mode: "slow-server",
          url: this.settings.url,
          queue,
          prefetch: spec.prefetch ?? PREFETCH,
          workMs: this.settings.plan.recovery.workMs,
          skipLate: spec.kind === "slow-skip-late",
        };
        return [Deno.execPath(), ["run", "-A", "bench/child.ts", JSON.stringify(config)], "piped"];
      }
    }
  }

  /** Starts a process in the repository, tracked so close() can stop it. */
  spawn(
    command: string,
    args: string[],
    env: Record<string, string>,
    stdout: "null" | "piped",
  ): Deno.ChildProcess {
    if (this.#closing) throw new Error("interrupted"); // nothing new once cleaning up
    const child = new Deno.Command(command, {
      args,
      cwd: ROOT,
      clearEnv: true,
      env: childEnv({ AMQP_URL: this.settings.url, ...env }),
      stdin: "null",
      stdout,
      stderr: "inherit",
    }).spawn();
    track(child);
    return child;
  }

  /** Waits, up to 30 s, until `count` consumers are on `queue`; fails if a server exits. */
  async consumers(queue: string, count: number, children: Deno.ChildProcess[]): Promise<void> {
    let exited = false;
    for (const child of children) child.status.then(() => (exited = true));
    const deadline = performance.now() + 30_000;
    while (performance.now() < deadline && !exited) {
      // A channel per look: a queue not declared yet (404) closes it.
      const channel = await this.connection.createChannel();
      channel.on("error", () => {});
      const found = await channel.checkQueue(queue).catch(() => ({ consumerCount: -1 }));
      await channel.close().catch(() => {});
      if (found.consumerCount >= count) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(
      exited ? `a server for ${queue} exited at start-up` : `no ${count} consumer(s) on ${queue}`,
    );
  }

  /** Stops the servers started for `spec`, if any, and returns what they printed. */
  async stopServer(spec: ServerSpec): Promise<string[]> {
    const running = this.#servers.get(JSON.stringify(spec));
    if (!running) return [];
    this.#servers.delete(JSON.stringify(spec));
    return await Promise.all(running.children.map((child) => stop(child)));
  }

  /** Stops every process, deletes every queue and file, closes the connection. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.all([...children].map((child) => stop(child)));
      for (const queue of this.#queues) await this.channel.deleteQueue(queue).catch(() => {});
      for (const file of this.#files) await Deno.remove(file).catch(() => {});
      await this.connection.close().catch(() => {});
    })();
    return this.#closing;
  }
}

/** SIGTERM to the child's PID; SIGKILL if it is still there after 10 s. Returns its stdout. */
async function stop(child: Deno.ChildProcess): Promise<string> {
  let output = Promise.resolve("");
  try {
    output = new Response(child.stdout).text().catch(() => "");
  } catch { /* its stdout is not piped */ }
  try {
    child.kill("SIGTERM");
  } catch { /* already gone */ }
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* gone meanwhile */ }
  }, 10_000);
  await child.status;
  clearTimeout(timer);
  return await output;
}

/** Runs a command to its end in the repository, killed if it takes longer than `limitMs`. */
async function run(
  command: string,
  args: string[],
  limitMs: number,
  env: Record<string, string> = {},
): Promise<Deno.CommandOutput> {
  const child = new Deno.Command(command, {
    args,
    cwd: ROOT,
    clearEnv: true,
    env: childEnv(env),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(limitMs),
  }).spawn();
  track(child);
  return await child.output();
}

/**
 * A child's environment: this process's without any `OTEL_*` variable (so
 * tracing is off unless `extra` turns it on), plus `extra`.
 */
function childEnv(extra: Record<string, string>): Record<string, string> {
  const env = Object.entries(Deno.env.toObject()).filter(([name]) => !name.startsWith("OTEL_"));
  return { ...Object.fromEntries(env), ...extra };
}

/** Every process the benchmark started and that is still running, for Lab.close() to stop. */
const children = new Set<Deno.ChildProcess>();

function track(child: Deno.ChildProcess): void {
  children.add(child);
  child.status.then(() => children.delete(child));
}

/** Rejects if `promise` takes longer than `ms`: no turn may hang the run. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took over ${ms / 1000} s`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Our client, every feature on (deadline, expiration, mandatory, confirms where it has them). */
function connectOurs(lab: Lab, queue: string): Promise<FibonacciRpcClient> {
  return FibonacciRpcClient.connect({ url: lab.settings.url, queue, replyQueue: "exclusive" });
}

async function ours(lab: Lab, queue: string): Promise<Contender> {
  const client = await connectOurs(lab, queue);
  return { call: (n) => client.call(n), close: () => client.close() };
}

/** The generic layer's client: `n` as text to `queue`, the reply's bytes read back as text. */
async function generic(lab: Lab, queue: string): Promise<Contender> {
  const client = await RpcClient.connect({ url: lab.settings.url, replyQueue: "exclusive" });
  const decoder = new TextDecoder();
  return {
    call: (n) => client.call(queue, String(n)).then((reply) => decoder.decode(reply)),
    close: () => client.close(),
  };
}

/** The raw pair that is ours minus our own code: same features, writes coalesced as ours are. */
const COALESCED = "raw, same features, writes coalesced";

/** The raw pairs: which features the client uses, and which raw server answers it. */
const RAW_PAIRS = {
  "raw, same features": { confirms: true, properties: true, server: "raw-reply-connection" },
  [COALESCED]: { confirms: true, properties: true, coalesce: true, server: "raw-coalesced" },
  "raw + confirms": { confirms: true, properties: false, server: "raw" },
  "raw + expiration, mandatory, x-deadline": { confirms: false, properties: true, server: "raw" },
  "raw + replies on a 2nd server connection": {
    confirms: false,
    properties: false,
    server: "raw-reply-connection",
  },
  "raw, plain": { confirms: false, properties: false, server: "raw" },
} as const;

/**
 * Our client against our server (`ours`, logging as shipped, `ours-quiet`,
 * or `generic`: the generic layer's pair), and each raw pair, connected, with
 * the servers they talk to.
 */
async function contenders(
  lab: Lab,
  type: QueueType,
  kinds: ("ours" | "ours-quiet" | "generic")[],
): Promise<Record<string, Contender & { server: Running }>> {
  const result: Record<string, Contender & { server: Running }> = {};
  const add = async (
    name: string,
    kind: ServerKind,
    connect: (queue: string) => Promise<Contender>,
  ) => {
    const server = await lab.server({ kind, type });
    result[name] = { ...await connect(server.queue), server };
  };
  const names = { ours: OURS, "ours-quiet": QUIET, generic: GENERIC };
  const client = (kind: "ours" | "ours-quiet" | "generic") => (queue: string) =>
    kind === "generic" ? generic(lab, queue) : ours(lab, queue);
  // Ours right before the raw pair with the same features: in the rotating
  // order of the turns the two run back to back in all turns but one.
  await add(names[kinds[0]], kinds[0], client(kinds[0]));
  for (const [name, { server, ...features }] of Object.entries(RAW_PAIRS)) {
    await add(name, server, (queue) => rawClient({ url: lab.settings.url, queue, ...features }));
    if (name === "raw, same features") {
      for (const kind of kinds.slice(1)) await add(names[kind], kind, client(kind));
    }
  }
  return result;
}

// --- the loops ----------------------------------------------------------------

/** Keeps `concurrency` calls in flight until `calls` are done or `limitMs` passed. */
async function pipelined(
  call: Call,
  concurrency: number,
  calls: number,
  limitMs = 60_000,
  n: () => number = () => 1,
): Promise<{ callsPerSecond: number; ms: number; calls: number }> {
  let started = 0, done = 0;
  const began = performance.now();
  const deadline = began + limitMs;
  const work = Promise.all(Array.from({ length: concurrency }, async () => {
    while (started < calls && performance.now() < deadline) {
      started++;
      await call(n());
      done++;
    }
  }));
  await within(work, limitMs + 30_000, "a pipelined turn");
  const ms = performance.now() - began;
  return { callsPerSecond: (1000 * done) / ms, ms, calls: done };
}

/** One call at a time; the latency of each in ms. */
async function sequential(call: Call, calls: number, limitMs = 60_000): Promise<number[]> {
  const samples: number[] = [];
  const deadline = performance.now() + limitMs;
  for (let i = 0; i < calls && performance.now() < deadline; i++) {
    const started = performance.now();
    await within(call(1), 30_000, "a sequential call");
    samples.push(performance.now() - started);
  }
  return samples;
}

/**
 * Runs `turns` turns; in each, every contender once, the order rotating from
 * turn to turn so that none always goes first. Returns each one's results.
 */
async function interleaved<T>(
  turns: number,
  contenders: Record<string, () => Promise<T>>,
): Promise<Record<string, T[]>> {
  const names = Object.keys(contenders);
  const results: Record<string, T[]> = Object.fromEntries(names.map((name) => [name, []]));
  for (let turn = 0; turn < turns; turn++) {
    for (let i = 0; i < names.length; i++) {
      const name = names[(i + turn) % names.length];
      results[name].push(await contenders[name]());
    }
  }
  return results;
}

// --- the measurements -------------------------------------------------------

const OURS = "ours (server logging as shipped)";
const QUIET = "ours, server --quiet";
const GENERIC = "ours, generic RpcClient → RpcServer (bytes handler)";
const PIKA = "pika loop → interop/peer_server.py";

/**
 * The ratios every pairwise table shows, each the median of per-turn ratios:
 * ours against the raw pairs (and the pika pair), and each raw feature
 * against none, which is that feature's price.
 */
function pairRatios(perTurn: Record<string, number[]>): Record<string, Spread> {
  const plain = perTurn["raw, plain"];
  const ratios: Record<string, Spread> = {
    "ours / raw, same features": ratio(perTurn[OURS], perTurn["raw, same features"]),
    "ours / raw, plain": ratio(perTurn[OURS], plain),
    [`ours / ${COALESCED}`]: ratio(perTurn[OURS], perTurn[COALESCED]),
  };
  if (perTurn[QUIET]) {
    ratios["ours, server --quiet / raw, same features"] = ratio(
      perTurn[QUIET],
      perTurn["raw, same features"],
    );
  }
  if (perTurn[GENERIC]) {
    ratios["ours, generic / raw, same features"] = ratio(
      perTurn[GENERIC],
      perTurn["raw, same features"],
    );
    ratios["ours, generic / ours"] = ratio(perTurn[GENERIC], perTurn[OURS]);
  }
  if (perTurn[PIKA]) ratios["ours / pika pair"] = ratio(perTurn[OURS], perTurn[PIKA]);
  ratios[`${COALESCED} / raw, same features`] = ratio(
    perTurn[COALESCED],
    perTurn["raw, same features"],
  );
  for (const name of Object.keys(RAW_PAIRS).filter((name) => name !== "raw, plain")) {
    ratios[`${name} / raw, plain`] = ratio(perTurn[name], plain);
  }
  return ratios;
}

/** A table of ratios by queue type. */
function ratioTable(title: string, ratios: Record<string, Record<string, Spread>>): void {
  table(
    title,
    ["ratio", "quorum queue", "classic queue"],
    Object.keys(ratios.quorum).map((name) => [
      name,
      show(ratios.quorum[name], fixed(2)),
      show(ratios.classic[name], fixed(2)),
    ]),
  );
}

type CpuTotal = Cpu & { calls: number };

/** One pipelined turn, adding the CPU that client, server and broker spent to `total`. */
async function cpuTurn(
  lab: Lab,
  pair: Contender & { server: Running },
  total: CpuTotal,
  calls = lab.settings.plan.throughput.calls,
): Promise<number> {
  const { concurrency } = lab.settings.plan.throughput;
  const pids = pair.server.children.map((child) => child.pid);
  const before = await lab.cpu(pids);
  const turn = await pipelined(pair.call, concurrency, calls);
  const after = await lab.cpu(pids);
  for (const key of ["client", "server", "broker"] as const) total[key] += after[key] - before[key];
  total.calls += turn.calls;
  return turn.callsPerSecond;
}

/** Interleaved throughput turns on one queue type: calls/s per turn, and CPU totals. */
async function throughputOn(lab: Lab, type: QueueType) {
  const pairs = await contenders(lab, type, ["ours", "ours-quiet", "generic"]);
  const cpu: Record<string, CpuTotal> = {};
  try {
    for (const { call } of Object.values(pairs)) {
      await pipelined(call, 256, Math.min(lab.settings.plan.throughput.calls, 2_000)); // warm-up
    }
    const rates = await interleaved(
      lab.settings.plan.throughput.turns,
      mapValues(pairs, (pair, name) => {
        cpu[name] = { client: 0, server: 0, broker: 0, calls: 0 };
        return () => cpuTurn(lab, pair, cpu[name]);
      }),
    );
    const lines = async (name: string) =>
      (await Deno.readTextFile(pairs[name].server.log!).catch(() => "")).split("\n").length - 1;
    return { rates, cpu, logLines: { ours: await lines(OURS), generic: await lines(GENERIC) } };
  } finally {
    for (const pair of Object.values(pairs)) await pair.close();
  }
}

/** "N and M": how many lines our two servers (Fibonacci, generic) logged. */
const logLines = ({ logLines }: { logLines: { ours: number; generic: number } }) =>
  `${int(logLines.ours)} and ${int(logLines.generic)}`;

/** 1. Calls/s at 256 in flight: ours against raw pairs with and without each feature. */
async function throughput(lab: Lab) {
  const { turns, calls, concurrency } = lab.settings.plan.throughput;
  const quorum = await throughputOn(lab, "quorum");
  const classic = await throughputOn(lab, "classic");
  const both = { quorum, classic };
  const ratios = { quorum: pairRatios(quorum.rates), classic: pairRatios(classic.rates) };
  table(
    `Throughput, fib(1), ${concurrency} calls in flight, one server, prefetch ${PREFETCH}; ` +
      `calls/s, median (min–max) of ${turns} interleaved turns of ${int(calls)} calls`,
    ["client → server", "quorum queue", "classic queue"],
    Object.keys(quorum.rates).map((name) => [
      name,
      show(spread(quorum.rates[name])),
      show(spread(classic.rates[name])),
    ]),
  );
  ratioTable("Throughput ratios, median (min–max) of the per-turn ratios", ratios);
  const perCall = ({ calls, ...cpu }: CpuTotal) =>
    (["client", "server", "broker"] as const).map((key) => int((1000 * cpu[key]) / calls));
  table(
    "CPU per call in µs, over all turns: client (this process), server (its process), " +
      "broker (the RabbitMQ node, which anything else using it also loads)",
    [
      "client → server",
      "quorum: client",
      "server",
      "broker",
      "classic: client",
      "server",
      "broker",
    ],
    Object.keys(quorum.cpu).map((name) => [
      name,
      ...perCall(quorum.cpu[name]),
      ...perCall(classic.cpu[name]),
    ]),
  );
  say(`\n"Same features": requests on a confirm channel with mandatory, expiration and`);
  say(`x-deadline; replies on a second server connection. Ours: rpc/fib_server.ts and`);
  say(`FibonacciRpcClient; generic: bench/generic_server.ts (RpcServer) and RpcClient.`);
  say(`Our servers' stdout went to files: ${logLines(quorum)} lines (Fibonacci, generic) on`);
  say(`the quorum queue, ${logLines(classic)} on the classic one.`);
  say(tracingEnabled() ? tracingHere() : "Tracing off in every row: OTEL_DENO unset everywhere.");
  for (const type of ["quorum", "classic"] as const) {
    const figure = ratios[type]["ours / raw, same features"];
    verdict(`throughput, ${type}: ours / raw same features >= 0.95`, figure, 0.95, true);
  }
  return {
    turns,
    calls,
    concurrency,
    prefetch: PREFETCH,
    ratios,
    ...mapValues(both, ({ rates, cpu }) => ({ callsPerSecond: rates, cpu })),
  };
}

/** Alternating turns of ours and of the raw pair that differs from it only by our code. */
async function ownCodeOn(lab: Lab, type: QueueType) {
  const { turns, calls } = lab.settings.plan.ownCode;
  const { server: rawKind, ...features } = RAW_PAIRS[COALESCED];
  const oursServer = await lab.server({ kind: "ours", type });
  const rawServer = await lab.server({ kind: rawKind, type });
  const pairs: Record<string, Contender & { server: Running }> = {
    [OURS]: { ...await ours(lab, oursServer.queue), server: oursServer },
    [COALESCED]: {
      ...await rawClient({ url: lab.settings.url, queue: rawServer.queue, ...features }),
      server: rawServer,
    },
  };
  try {
    for (const { call } of Object.values(pairs)) await pipelined(call, 256, 2_000); // warm-up
    const cpu = mapValues(pairs, (): CpuTotal => ({ client: 0, server: 0, broker: 0, calls: 0 }));
    const rates = await interleaved(
      turns,
      mapValues(pairs, (pair, name) => () => cpuTurn(lab, pair, cpu[name], calls)),
    );
    return { rates, cpu, ratio: ratio(rates[OURS], rates[COALESCED]) };
  } finally {
    for (const pair of Object.values(pairs)) await pair.close();
  }
}

/**
 * 2. What our own code costs: ours against the raw pair with the same
 * features and the same write coalescing, the two alone, in many short
 * alternating turns, for a tighter figure than the nine-way table's.
 */
async function ownCode(lab: Lab) {
  const { turns, calls } = lab.settings.plan.ownCode;
  const { concurrency } = lab.settings.plan.throughput;
  const both = { quorum: await ownCodeOn(lab, "quorum"), classic: await ownCodeOn(lab, "classic") };
  const perCall = (cpu: CpuTotal, key: "client" | "server") => int((1000 * cpu[key]) / cpu.calls);
  table(
    `Our own code: ours against "${COALESCED}", the two alone, ${turns} alternating turns of ` +
      `${int(calls)} calls at ${concurrency} in flight; calls/s and per-turn ratio, median ` +
      `(min–max); CPU per call in µs over all turns`,
    [
      "queue",
      "ours",
      "raw",
      "ours / raw",
      "95 % interval",
      "client: ours",
      "raw",
      "server: ours",
      "raw",
    ],
    Object.entries(both).map(([type, { rates, cpu, ratio }]) => [
      type,
      show(spread(rates[OURS])),
      show(spread(rates[COALESCED])),
      show(ratio, fixed(2)),
      interval(ratio),
      perCall(cpu[OURS], "client"),
      perCall(cpu[COALESCED], "client"),
      perCall(cpu[OURS], "server"),
      perCall(cpu[COALESCED], "server"),
    ]),
  );
  for (const [type, { ratio }] of Object.entries(both)) {
    verdict(`own code, ${type}: ours / raw same features, coalesced >= 0.95`, ratio, 0.95, true);
  }
  return {
    turns,
    calls,
    concurrency,
    ...mapValues(both, ({ rates, cpu }) => ({ callsPerSecond: rates, cpu })),
  };
}

/** Sequential calls from the embedded pika loop, in a process of its own; its latencies in ms. */
async function pythonSequential(lab: Lab, queue: string, calls: number): Promise<number[]> {
  const output = await run(PYTHON, ["-c", PIKA_SEQUENTIAL], 120_000, {
    AMQP_URL: lab.settings.url,
    RPC_QUEUE: queue,
    CALLS: String(calls),
  });
  if (!output.success) {
    throw new Error(`the pika loop failed: ${new TextDecoder().decode(output.stderr)}`);
  }
  return JSON.parse(new TextDecoder().decode(output.stdout));
}

/** Interleaved sequential turns on one queue type: each turn's latencies, per pair. */
async function sequentialOn(lab: Lab, type: QueueType): Promise<Record<string, number[][]>> {
  const { turns, calls } = lab.settings.plan.sequential;
  const pairs = await contenders(lab, type, ["ours"]);
  try {
    const turnsOf: Record<string, () => Promise<number[]>> = {};
    for (const [name, { call }] of Object.entries(pairs)) {
      await sequential(call, 50); // warm-up
      turnsOf[name] = () => sequential(call, calls);
    }
    if (lab.python.peerServer) {
      const { queue } = await lab.server({ kind: "python", type });
      turnsOf[PIKA] = () => pythonSequential(lab, queue, calls);
    }
    return await interleaved(turns, turnsOf);
  } finally {
    for (const pair of Object.values(pairs)) await pair.close();
  }
}

/** 3. One call at a time: ours, the raw pairs, and the pika pair. */
async function sequentialLatency(lab: Lab) {
  const { turns, calls } = lab.settings.plan.sequential;
  if (!lab.python.peerServer) say("\n(no Python pair: interop/peer_server.py or pika missing)");
  const rows: string[][] = [];
  const ratios: Record<string, Record<string, Spread>> = {};
  const results: Record<string, unknown> = {};
  for (const type of ["quorum", "classic"] as const) {
    const samples = await sequentialOn(lab, type);
    const p50s: Record<string, number[]> = {};
    for (const [name, perTurn] of Object.entries(samples)) {
      p50s[name] = perTurn.map((turn) => percentile(turn, 50));
      const all = perTurn.flat();
      const mean = all.reduce((sum, ms) => sum + ms, 0) / all.length;
      const p99 = percentile(all, 99);
      rows.push([`${name} (${type})`, show(spread(p50s[name]), fixed(3)), p99.toFixed(3)]);
      rows.at(-1)!.push(mean.toFixed(3), int(1000 / mean));
      results[`${name} (${type})`] = { p50: spread(p50s[name]), p99, mean };
    }
    ratios[type] = pairRatios(p50s);
  }
  table(
    `Sequential fib(1), one server; ms; p50 as median (min–max) of ${turns} interleaved turns ` +
      `of ${calls} calls, p99 and mean over all`,
    ["pair (queue)", "p50", "p99", "mean", "calls/s"],
    rows,
  );
  ratioTable("Sequential ratios of p50, median (min–max) of the per-turn ratios", ratios);
  for (const type of ["quorum", "classic"]) {
    const figure = ratios[type]["ours / raw, same features"];
    verdict(`sequential, ${type}: ours / raw same features, p50 <= 1.10`, figure, 1.1, false);
  }
  return { turns, calls, ...results, ratios };
}

/** One client process doing `calls` pipelined calls; its RSS samples. */
async function memoryRun(lab: Lab, client: string, queue: string) {
  const { calls, concurrency } = lab.settings.plan.memory;
  const config = { mode: "memory", url: lab.settings.url, queue, client, calls, concurrency };
  const args = ["run", "-A", "--v8-flags=--expose-gc", "bench/child.ts", JSON.stringify(config)];
  const output = await run(Deno.execPath(), args, 330_000);
  if (!output.success) {
    throw new Error(`memory run failed: ${new TextDecoder().decode(output.stderr).trim()}`);
  }
  const text = new TextDecoder().decode(output.stdout).trim();
  const lines = text.split("\n").map((line) => JSON.parse(line));
  return {
    samples: lines.filter((l) => !l.final) as { calls: number; ms: number; rssMiB: number }[],
    final: lines.find((l) => l.final) as { heapAfterGcMiB: number; pendingCalls: number },
  };
}

/** 4. Client RSS over many pipelined calls, each client in a fresh process. */
async function memory(lab: Lab) {
  const { turns, calls, concurrency } = lab.settings.plan.memory;
  const queues = {
    ours: (await lab.server({ kind: "ours", type: "quorum" })).queue,
    "raw-full": (await lab.server({ kind: "raw-reply-connection", type: "quorum" })).queue,
  };
  type Client = keyof typeof queues;
  const runs = await interleaved(
    turns,
    mapValues(queues, (queue, client) => () => memoryRun(lab, client, queue)),
  );
  const label = { ours: "ours", "raw-full": "raw, same features" };
  const clients = Object.keys(queues) as Client[];
  const at = (client: Client, i: number, key: "ms" | "rssMiB") =>
    spread(runs[client].map((r) => r.samples[Math.min(i, r.samples.length - 1)][key])).median;
  const rows = runs.ours[0].samples.map(({ calls }, i) => [
    int(calls),
    ...clients.flatMap((c) => [at(c, i, "ms") / 1000, at(c, i, "rssMiB")]).map(fixed(1)),
  ]);
  table(
    `Client RSS over ${int(calls)} pipelined calls at ${concurrency} in flight, quorum queue, ` +
      `each client in a fresh process; MiB, median of ${turns} interleaved run(s)`,
    ["calls done", ...clients.flatMap((c) => [`${label[c]}: s`, "RSS"])],
    rows,
  );
  const heap = (c: Client) => show(spread(runs[c].map((r) => r.final.heapAfterGcMiB)), fixed(1));
  const pending = runs.ours.map((r) => r.final.pendingCalls).join(", ");
  say(`\nHeap after a forced GC at the end (MiB): ours ${heap("ours")}, raw ${heap("raw-full")};`);
  say(`calls still pending in ours: ${pending}.`);
  const finalRss = (c: Client) => runs[c].map((r) => r.samples.at(-1)!.rssMiB);
  const oursOverRaw = ratio(finalRss("ours"), finalRss("raw-full"));
  say(`RSS after ${int(calls)} calls, ours / raw same features: ${show(oursOverRaw, fixed(2))}.`);
  verdict(`memory: ours / raw RSS after ${int(calls)} calls <= 1.2`, oursOverRaw, 1.2, false);
  return { turns, calls, concurrency, runs, oursOverRaw };
}

/** One cold run: wall time, and the child's phase stamps if it prints them. */
async function coldRun(command: string, args: string[], env: Record<string, string>) {
  const spawned = performance.timeOrigin + performance.now();
  const output = await run(command, args, 30_000, env);
  const ended = performance.timeOrigin + performance.now();
  if (!output.success) {
    throw new Error(`${command} ${args[0]} failed: ${new TextDecoder().decode(output.stderr)}`);
  }
  const text = new TextDecoder().decode(output.stdout).trim();
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
  const child = (mode: string) => JSON.stringify({ mode, url: lab.settings.url, queue });
  const deno = (...args: string[]): [string, string[]] => [Deno.execPath(), ["run", "-A", ...args]];
  const commands: Record<string, [string, string[]]> = {
    [CLI]: deno("rpc/fib_client.ts", "--queue", queue, "30"),
    "deno run -A bench/child.ts cold (ours, stamped)": deno("bench/child.ts", child("cold")),
    "deno run -A bench/child.ts cold-raw (amqplib, stamped)": deno(
      "bench/child.ts",
      child("cold-raw"),
    ),
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
async function coldStart(lab: Lab) {
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

/** One overload: a burst of short-deadline calls, then the time until a fresh call is answered. */
async function overloadOnce(client: FibonacciRpcClient, burst: number, deadlineMs: number) {
  const calls = Array.from({ length: burst }, () => client.call(1, { timeout: deadlineMs }));
  const outcomes = await within(Promise.allSettled(calls), deadlineMs + 60_000, "a burst");
  const burstEnded = performance.now();
  await client.call(1, { timeout: 60_000 });
  return {
    ms: performance.now() - burstEnded,
    answered: outcomes.filter((o) => o.status === "fulfilled").length,
  };
}

/** 6. Recovery after overload, skipping late requests (the default) or not. */
async function recovery(lab: Lab) {
  const { turns, burst, deadlineMs, workMs } = lab.settings.plan.recovery;
  const specs: Record<string, ServerSpec> = {
    "skip late requests (default)": { kind: "slow-skip-late", type: "quorum" },
    "compute every request (skipLate: false)": { kind: "slow-no-skip-late", type: "quorum" },
  };
  const clients: Record<string, FibonacciRpcClient> = {};
  try {
    for (const [name, spec] of Object.entries(specs)) {
      clients[name] = await connectOurs(lab, (await lab.server(spec)).queue);
      await clients[name].call(1); // warm-up
    }
    const runs = await interleaved(
      turns,
      mapValues(clients, (client) => () => overloadOnce(client, burst, deadlineMs)),
    );
    const printed: string[] = [];
    for (const spec of Object.values(specs)) printed.push(...await lab.stopServer(spec));
    table(
      `Recovery from overload: ${burst} calls with ${deadlineMs} ms deadlines at once against one ` +
        `server (prefetch ${PREFETCH}, ${workMs} ms of CPU per request, quorum queue), then a ` +
        `fresh call; ms from the burst's end to its answer, median (min–max) of ${turns} turns`,
      ["server", "recovery ms", "burst calls answered"],
      Object.entries(runs).map(([name, list]) => [
        name,
        show(spread(list.map((r) => r.ms)), fixed(1)),
        show(spread(list.map((r) => r.answered))),
      ]),
    );
    const [skipping, computing] = Object.values(runs).map((list) => list.map((r) => r.ms));
    const slower = ratio(computing, skipping);
    say(`\nRecovery, computing every request / skipping late ones: ${show(slower, fixed(1))}`);
    say(
      `(The server skips a request once its deadline is ${DEADLINE_GRACE_MS} ms past, not sooner.)`,
    );
    const counts = printed.map((text) => text.trim().split("\n").at(-1)).join("; ");
    say(`Server counts at exit (answered, skipped): ${counts}`);
    return { turns, burst, deadlineMs, workMs, runs, ratio: slower };
  } finally {
    for (const client of Object.values(clients)) await client.close();
  }
}

/** 7. Prefetch: calls/s for fast work and total time for uneven work, 2 servers. */
async function prefetch(lab: Lab) {
  const { turns, fast, uneven } = lab.settings.plan.prefetch;
  const values = [1, 10, 50, 250];
  const specs = values.map((p): ServerSpec => ({
    kind: "ours-quiet",
    type: "quorum",
    prefetch: p,
    count: 2,
  }));
  const clients: Record<string, FibonacciRpcClient> = {};
  try {
    for (const [i, spec] of specs.entries()) {
      const client = clients[values[i]] = await connectOurs(lab, (await lab.server(spec)).queue);
      await pipelined((n) => client.call(n), 64, 500); // warm-up
    }
    const runs = await interleaved(
      turns,
      mapValues(clients, (client) => async () => {
        let i = 0;
        const alternate = () => (i++ % 2 === 0 ? 10_000 : 1);
        const call = (n: number) => client.call(n);
        return {
          fast: (await pipelined(call, 256, fast)).callsPerSecond,
          unevenMs: (await pipelined(call, 256, uneven, 60_000, alternate)).ms,
        };
      }),
    );
    table(
      `Prefetch, two of our servers (--quiet), quorum queue, 256 in flight; median (min–max) ` +
        `of ${turns} turn(s): fib(1) calls/s over ${int(fast)} calls, and ms for ${int(uneven)} ` +
        `calls alternating fib(10000) (about 1 ms) and fib(1)`,
      ["prefetch", "fast calls/s", "uneven ms"],
      values.map((p) => [
        String(p),
        show(spread(runs[p].map((r) => r.fast))),
        show(spread(runs[p].map((r) => r.unevenMs))),
      ]),
    );
    return { turns, fast, uneven, runs };
  } finally {
    for (const client of Object.values(clients)) await client.close();
    for (const spec of specs) await lab.stopServer(spec);
  }
}

// --- tracing ------------------------------------------------------------------

/** What the OTLP receiver was sent: POSTs, and the spans of /v1/traces by their name's first word. */
interface Received {
  posts: number;
  traceExports: number;
  spans: number;
  send: number;
  process: number;
  rejected: number;
}

/** The largest export the receiver reads (Deno sends at most 512 spans, well under 2 MiB). */
const OTLP_MAX_BODY = 32 * 2 ** 20;

/**
 * A local OTLP/HTTP receiver for JSON (what Deno sends with
 * `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) on 127.0.0.1, a port of its own:
 * answers 200 `{}` to every POST (traces, logs, metrics), counts the spans
 * sent to /v1/traces, keeps nothing else; a body over 32 MiB gets 413.
 */
function otlpReceiver() {
  const received: Received = {
    posts: 0,
    traceExports: 0,
    spans: 0,
    send: 0,
    process: 0,
    rejected: 0,
  };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
    if (request.method !== "POST") return new Response(null, { status: 405 });
    received.posts++;
    const body = await readBody(request);
    if (body === undefined) {
      received.rejected++;
      return new Response(null, { status: 413 });
    }
    if (new URL(request.url).pathname === "/v1/traces") {
      received.traceExports++;
      try {
        countSpans(JSON.parse(body), received);
      } catch {
        received.rejected++;
        return new Response(null, { status: 400 });
      }
    }
    return Response.json({});
  });
  return {
    received,
    endpoint: `http://127.0.0.1:${server.addr.port}`,
    close: () => server.shutdown(),
  };
}

/** The request's body as text, gunzipped if need be; undefined past OTLP_MAX_BODY. */
async function readBody(request: Request): Promise<string | undefined> {
  if (Number(request.headers.get("content-length")) > OTLP_MAX_BODY) return undefined;
  let stream = request.body;
  if (!stream) return "";
  if (request.headers.get("content-encoding") === "gzip") {
    stream = stream.pipeThrough(new DecompressionStream("gzip"));
  }
  const chunks: Uint8Array<ArrayBuffer>[] = [];
  let size = 0;
  for await (const chunk of stream) {
    size += chunk.byteLength;
    if (size > OTLP_MAX_BODY) return undefined; // leaving the loop cancels the stream
    chunks.push(chunk);
  }
  return await new Blob(chunks).text();
}

/** Adds the spans of an OTLP/JSON trace export to `received`, by their name's first word. */
function countSpans(body: unknown, received: Received): void {
  type Export = { resourceSpans?: { scopeSpans?: { spans?: { name?: unknown }[] }[] }[] };
  for (const resource of (body as Export).resourceSpans ?? []) {
    for (const scope of resource.scopeSpans ?? []) {
      for (const span of scope.spans ?? []) {
        received.spans++;
        const word = typeof span.name === "string" ? span.name.split(" ")[0] : "";
        if (word === "send" || word === "process") received[word]++;
      }
    }
  }
}

/** One turn of the tracing measurement: a fresh client process against `server`. */
async function tracedTurn(lab: Lab, server: Running, on: boolean) {
  const { calls, warmup, concurrency } = lab.settings.plan.tracing;
  const config = {
    mode: "pipelined",
    url: lab.settings.url,
    queue: server.queue,
    calls,
    warmup,
    concurrency,
  };
  const env = on ? { ...lab.otel!, OTEL_SERVICE_NAME: "rpc_bench.client" } : {};
  const pids = server.children.map((child) => child.pid);
  const before = await lab.cpu(pids);
  const args = ["run", "-A", "bench/child.ts", JSON.stringify(config)];
  const output = await run(Deno.execPath(), args, 180_000, env);
  const after = await lab.cpu(pids);
  if (!output.success) {
    throw new Error(`a pipelined client failed: ${new TextDecoder().decode(output.stderr).trim()}`);
  }
  const line = new TextDecoder().decode(output.stdout).trim().split("\n").at(-1)!;
  const result = JSON.parse(line) as {
    tracing: boolean;
    warmup: number;
    calls: number;
    callsPerSecond: number;
    cpuMs: number;
  };
  if (result.tracing !== on) throw new Error(`a client traced: ${result.tracing}, expected ${on}`);
  return {
    callsPerSecond: result.callsPerSecond,
    calls: result.calls,
    served: result.warmup + result.calls,
    cpuMs: {
      client: result.cpuMs,
      server: after.server - before.server,
      broker: after.broker - before.broker,
      receiver: after.client - before.client,
    },
  };
}

type TracedTurn = Awaited<ReturnType<typeof tracedTurn>>;

/** Interleaved turns of our pair with tracing off and on, one queue type; the first is dropped. */
async function tracingOn(lab: Lab, type: QueueType) {
  const { turns } = lab.settings.plan.tracing;
  const specs: Record<"off" | "on", ServerSpec> = {
    off: { kind: "ours", type, tracing: "off" },
    on: { kind: "ours", type, tracing: "on" },
  };
  try {
    const servers = { off: await lab.server(specs.off), on: await lab.server(specs.on) };
    const runs = await interleaved(
      turns + 1, // the first turn warms the servers up; it is dropped below
      mapValues(servers, (server, name) => () => tracedTurn(lab, server, name === "on")),
    );
    const served = runs.on.reduce((sum, turn) => sum + turn.served, 0); // all: each made spans
    for (const list of Object.values(runs)) list.shift();
    return { runs: runs as Record<"off" | "on", TracedTurn[]>, spansExpected: served };
  } finally {
    // Stopped before the receiver closes: the server sends its last spans as it exits.
    for (const spec of Object.values(specs)) await lab.stopServer(spec);
  }
}

/**
 * The hot path with tracing off: `startCallSpan` and `end`, as the client
 * calls them for every call, in a tight loop; ns per call, median of the
 * rounds after a dropped first. Undefined if this process traces.
 */
function spanMicro(iterations: number, rounds: number): Spread | undefined {
  if (tracingEnabled()) return undefined;
  const perRound: number[] = [];
  let made = 0;
  for (let round = 0; round <= rounds; round++) {
    const began = performance.now();
    for (let i = 0; i < iterations; i++) {
      const span = startCallSpan("rpc_queue", "5f0c9a3e-4b7d-4c1a-9e2f-8d6b3a1c0e57");
      span?.end();
      if (span) made++;
    }
    perRound.push(((performance.now() - began) * 1e6) / iterations);
  }
  if (made) throw new Error(`startCallSpan made ${made} spans with tracing off`);
  return spread(perRound.slice(1));
}

/** Whether this process traces: the in-process clients' rows are tracing-off only if not. */
function tracingHere(): string {
  return tracingEnabled()
    ? "Tracing is ON in this process (OTEL_DENO=true): the rows of its own clients trace."
    : "Tracing off (OTEL_DENO unset) in this process and every server, except where marked on.";
}

/**
 * 8. What tracing costs: our pair (rpc/fib_server.ts, FibonacciRpcClient in
 * a fresh process) with `OTEL_DENO` unset, against the same pair with
 * `OTEL_DENO=true` in both processes, exporting to a local receiver.
 */
async function tracing(lab: Lab) {
  const { turns, calls, warmup, concurrency, microIterations, microRounds } =
    lab.settings.plan.tracing;
  const receiver = otlpReceiver();
  lab.otel = {
    OTEL_DENO: "true",
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
    OTEL_SERVICE_NAME: "rpc_bench.fib_server",
  };
  const both: Partial<Record<QueueType, Awaited<ReturnType<typeof tracingOn>>>> = {};
  try {
    for (const type of ["quorum", "classic"] as const) both[type] = await tracingOn(lab, type);
  } finally {
    lab.otel = undefined;
    await receiver.close();
  }
  const { received } = receiver;
  const results: Record<string, unknown> = { turns, calls, warmup, concurrency, received };
  const rows: string[][] = [];
  const lines: string[] = [];
  let expected = 0;
  for (const [type, { runs, spansExpected }] of Object.entries(both)) {
    expected += spansExpected;
    const rates = mapValues(runs, (list) => list.map((turn) => turn.callsPerSecond));
    const onOverOff = ratio(rates.on, rates.off);
    const perCall = (list: TracedTurn[], key: "client" | "server" | "broker" | "receiver") => {
      const ms = list.reduce((sum, turn) => sum + turn.cpuMs[key], 0);
      const count = list.reduce(
        (sum, turn) => sum + (key === "client" ? turn.calls : turn.served),
        0,
      );
      return (1000 * ms) / count;
    };
    const cpu = mapValues(runs, (list) => ({
      client: perCall(list, "client"),
      server: perCall(list, "server"),
      broker: perCall(list, "broker"),
      receiver: perCall(list, "receiver"),
    }));
    rows.push([
      type,
      show(spread(rates.off)),
      show(spread(rates.on)),
      show(onOverOff, fixed(2)),
      interval(onOverOff),
      ...(["client", "server", "broker"] as const).flatMap((key) => [
        int(cpu.off[key]),
        int(cpu.on[key]),
      ]),
      int(cpu.on.receiver),
    ]);
    lines.push(
      `tracing on, ${type}: ${int(spread(rates.on).median)} calls/s vs ` +
        `${int(spread(rates.off).median)} off, ratio ${fixed(2)(onOverOff.median)} ` +
        `(95 % interval ${interval(onOverOff)}; min–max ${fixed(2)(onOverOff.min)}–` +
        `${fixed(2)(onOverOff.max)})`,
    );
    results[type] = { callsPerSecond: rates, ratio: onOverOff, cpuMicrosPerCall: cpu };
  }
  table(
    `Tracing: our pair (rpc/fib_server.ts, FibonacciRpcClient), each client in a fresh process ` +
      `(bench/child.ts pipelined): off = OTEL_DENO unset, on = OTEL_DENO=true in server and ` +
      `client, spans sent as OTLP/HTTP JSON to a receiver in this process; ${int(warmup)} ` +
      `warm-up calls, then ${int(calls)} at ${concurrency} in flight; calls/s and on / off per ` +
      `turn, median (min–max) of ${turns} interleaved turns (a first one dropped); CPU per call ` +
      `in µs over all turns`,
    [
      "queue",
      "off",
      "on",
      "on / off",
      "95 % interval",
      "client: off",
      "on",
      "server: off",
      "on",
      "broker: off",
      "on",
      "receiver: on",
    ],
    rows,
  );
  say("");
  for (const line of lines) say(line);
  say(
    `Spans received: ${int(received.spans)} in ${int(received.traceExports)} trace exports ` +
      `(${int(received.send)} "send", ${int(received.process)} "process"; each expected ` +
      `${int(expected)}, one per call of the "on" clients, warm-up included); ` +
      `${int(received.posts)} POSTs in all, ${int(received.rejected)} refused.`,
  );
  say(`Client CPU: the child's own, over its timed calls; server, broker and receiver (this`);
  say(`process, parsing the exports): over each client process's life, per call it made.`);
  say(`The "ours" rows of the other tables are tracing off: OTEL_DENO unset everywhere.`);
  const micro = spanMicro(microIterations, microRounds);
  if (micro) {
    say(
      `\nstartCallSpan + end with tracing off (the client's hot path; ${int(microIterations)} ` +
        `iterations a round, ${microRounds} rounds): ${show(micro, fixed(1))} ns per call`,
    );
  } else say("\n(no startCallSpan figure: this process traces)");
  return { ...results, spansExpected: expected, startCallSpanNs: micro };
}

// --- Python, written for this benchmark -------------------------------------

/** Sequential fib(1) calls over one pika connection; prints the latencies (ms) as JSON. */
const PIKA_SEQUENTIAL = `
import json, os, time, uuid, pika
connection = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
channel = connection.channel()
callback = channel.queue_declare("", exclusive=True).method.queue
got = set()
channel.basic_consume(callback, lambda _c, _d, p, _b: got.add(p.correlation_id), auto_ack=True)
def call():
    ticket = str(uuid.uuid4())
    channel.basic_publish("", os.environ["RPC_QUEUE"], b"1",
                          pika.BasicProperties(reply_to=callback, correlation_id=ticket))
    give_up = time.monotonic() + 30
    while ticket not in got and time.monotonic() < give_up:
        connection.process_data_events(time_limit=None)
    got.discard(ticket)
for _ in range(50):
    call()
samples = []
for _ in range(int(os.environ["CALLS"])):
    started = time.perf_counter()
    call()
    samples.append((time.perf_counter() - started) * 1000)
connection.close()
print(json.dumps(samples))
`;

/** One cold fib(30) call with pika, stamping each phase in ms since the epoch, as JSON. */
const PIKA_COLD = `
import time
stamps = [["python started", time.time() * 1000]]
import json, os, uuid, pika
stamps.append(["pika loaded", time.time() * 1000])
connection = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
stamps.append(["TCP connect and AMQP handshake", time.time() * 1000])
channel = connection.channel()
stamps.append(["channel opened", time.time() * 1000])
callback = channel.queue_declare("", exclusive=True).method.queue
stamps.append(["callback queue declared", time.time() * 1000])
ticket = str(uuid.uuid4())
got = []
channel.basic_consume(callback, lambda _c, _d, p, _b: got.append(p.correlation_id), auto_ack=True)
stamps.append(["consumer started", time.time() * 1000])
channel.basic_publish("", os.environ["RPC_QUEUE"], b"30",
                      pika.BasicProperties(reply_to=callback, correlation_id=ticket))
give_up = time.monotonic() + 30
while ticket not in got and time.monotonic() < give_up:
    connection.process_data_events(time_limit=None)
stamps.append(["call answered", time.time() * 1000])
connection.close()
stamps.append(["connection closed", time.time() * 1000])
print(json.dumps(stamps))
`;

// --- the run ----------------------------------------------------------------

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

function fail(message: string): never {
  console.error(`rpc_bench: ${message} (see --help)`);
  Deno.exit(2);
}

async function describeMachine(lab: Lab): Promise<string> {
  const pika = lab.python.pika
    ? new TextDecoder().decode(
      (await run(PYTHON, [
        "-c",
        "import sys, pika; print(sys.version.split()[0], pika.__version__)",
      ], 10_000))
        .stdout,
    ).trim().replace(" ", ", pika ")
    : "no pika";
  const os = await Deno.readTextFile("/etc/debian_version").then(
    (v) => `Debian ${v.trim()}`,
    () => Deno.build.os,
  );
  return `${new Date().toISOString().slice(0, 16)}Z; ${navigator.hardwareConcurrency} cores, ` +
    `${
      (Deno.systemMemoryInfo().total / 2 ** 30).toFixed(0)
    } GiB, ${os}; RabbitMQ ${lab.brokerVersion} ` +
    `on this machine; Deno ${Deno.version.deno}; amqplib 2.3.1; Python ${pika}`;
}

async function main(settings: Settings): Promise<void> {
  quiet = settings.json;
  const measures: Record<Measurement, (lab: Lab) => Promise<unknown>> = {
    throughput,
    "own-code": ownCode,
    sequential: sequentialLatency,
    memory,
    cold: coldStart,
    recovery,
    prefetch,
    tracing,
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
    if (verdicts.length) {
      table("Targets", ["target", "median (min–max)", "95 % interval", "verdict"], verdicts);
    }
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
