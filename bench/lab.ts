/**
 * # bench/lab.ts: the broker, the servers and the CPU they use
 *
 * `Lab` holds the benchmark's own broker connection, which declares, watches
 * and deletes its queues; starts the server processes each measurement asks
 * for (ours, generic, raw, Python, rabbitmq-client, slow), one queue of their own per kind;
 * reads the CPU of this process, the servers and the broker; and cleans up
 * everything it made, also on Ctrl-C.
 *
 * @module
 */
import process from "node:process";
import amqp from "npm:amqplib@2.3.1";
import type { Channel, ChannelModel } from "npm:amqplib@2.3.1";
import { childCommand, childEnv, children, denoRun, probe, run, stop, track } from "./processes.ts";
import { PREFETCH, PYTHON, type QueueType, ROOT, type Settings } from "./settings.ts";

/**
 * What a server process runs. `ours` (rpc/fib_server.ts) and `generic`
 * (bench/generic_server.ts) log as shipped, their stdout going to a file.
 * `rabbitmq-client` (bench/rabbitmq_client.ts) turns Nagle's algorithm off
 * as ours does; `rabbitmq-client-as-shipped` leaves it on, its default.
 */
export type ServerKind =
  | "ours"
  | "ours-quiet"
  | "generic"
  | "raw"
  | "raw-reply-connection"
  | "raw-coalesced"
  | "python"
  | "rabbitmq-client"
  | "rabbitmq-client-as-shipped"
  | "slow-skip-late"
  | "slow-no-skip-late";

/** The servers a measurement asks for: what they run, on which queue type, how many. */
export interface ServerSpec {
  kind: ServerKind;
  type: QueueType;
  prefetch?: number;
  count?: number;
  /** `generic` and `rabbitmq-client`: handlers at once (ours ignores it before issue 25's merge). */
  concurrency?: number;
  /** `generic` and `rabbitmq-client`: ms the handler awaits before it answers (I/O-bound). */
  delayMs?: number;
  /**
   * The tracing measurement's own servers: "on" with `OTEL_DENO=true` and
   * the OTLP variables of `Lab.otel`, "off" without (like every other).
   */
  tracing?: "off" | "on";
}

/** CPU ms: this process (the clients), the server processes, the broker. */
export interface Cpu {
  client: number;
  server: number;
  broker: number;
}

/** Servers started for one spec: their queue, their processes, the file they log to. */
export interface Running {
  queue: string;
  children: Deno.ChildProcess[];
  log?: string;
}

/**
 * The broker connection the benchmark declares, watches and deletes its
 * queues with, and the processes and files it made, for cleaning up.
 */
export class Lab {
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

  /** Connects to the broker and finds out what this machine has: pika, the broker's PID. */
  static async open(settings: Settings): Promise<Lab> {
    const connection = await amqp.connect(settings.url);
    connection.on("error", (error: Error) => console.error(`rpc_bench: broker: ${error.message}`));
    const channel = await connection.createChannel();
    const exists = (file: string) => Deno.stat(`${ROOT}${file}`).then(() => true, () => false);
    const pika = settings.python && (await run(PYTHON, ["-c", "import pika"], 10_000)).success;
    const port = new URL(settings.url).port || "5672";
    const listener = await probe("ss", ["-ltnpH", `sport = :${port}`]);
    return new Lab(
      settings,
      connection,
      channel,
      {
        pika,
        peerServer: pika && await exists("interop/peer_server.py"),
        peerClient: pika && await exists("interop/peer_client.py"),
      },
      Number(await probe("getconf", ["CLK_TCK"])) || 100,
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

  /** The broker's version, as it announced itself. */
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

  /** The command that runs one server for `spec` on `queue`, and where its stdout goes. */
  #serverCommand(
    spec: ServerSpec,
    queue: string,
    log?: string,
  ): [string, string[], "null" | "piped"] {
    const prefetch = String(spec.prefetch ?? PREFETCH);
    const options = ["--url", this.settings.url, "--queue", queue, "--prefetch", prefetch];
    options.push("--queue-type", spec.type);
    const ours = ["rpc/fib_server.ts", ...options];
    // As shipped, logging on, stdout to a file; `exec` keeps the PID that of Deno.
    const logged = (args: string[]): [string, string[], "null"] => [
      "/bin/sh",
      ["-c", 'exec "$@" >"$0"', log!, ...denoRun(...args).flat()],
      "null",
    ];
    switch (spec.kind) {
      case "ours":
        return logged(ours);
      case "ours-quiet":
        return [...denoRun(...ours, "--quiet"), "null"];
      case "generic":
        return logged(["bench/generic_server.ts", ...options, ...this.#handlerOptions(spec)]);
      case "rabbitmq-client":
      case "rabbitmq-client-as-shipped": {
        const args = ["bench/rabbitmq_client.ts", ...options, ...this.#handlerOptions(spec)];
        if (spec.kind === "rabbitmq-client-as-shipped") args.push("--nagle");
        return [...denoRun(...args), "null"];
      }
      case "raw":
      case "raw-reply-connection":
      case "raw-coalesced": {
        const args = ["bench/raw.ts", "--url", this.settings.url, "--queue", queue];
        args.push("--prefetch", prefetch);
        if (spec.kind !== "raw") args.push("--reply-connection");
        if (spec.kind === "raw-coalesced") args.push("--coalesce");
        return [...denoRun(...args), "null"];
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
        return [...childCommand(config), "piped"];
      }
    }
  }

  /** `--concurrency N` and `--delay-ms MS`, where `spec` sets them. */
  #handlerOptions(spec: ServerSpec): string[] {
    const args = [];
    if (spec.concurrency !== undefined) args.push("--concurrency", String(spec.concurrency));
    if (spec.delayMs !== undefined) args.push("--delay-ms", String(spec.delayMs));
    return args;
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
