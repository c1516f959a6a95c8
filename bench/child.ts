/**
 * # bench/child.ts: the parts of the benchmark that need a process of their own
 *
 * `rpc_bench.ts` runs this file with one argument, a JSON object whose `mode`
 * says what to do; it is not meant to be run by hand, but can be:
 *
 * ```sh
 * deno run -A bench/child.ts '{"mode":"cold","url":"amqp://127.0.0.1","queue":"rpc_queue"}'
 * ```
 *
 * - `cold`: one call as `rpc/fib_client.ts 30` makes it, with the library
 *   (`rpc/mod.ts`), stamping each phase (modules loaded, connected, answered,
 *   closed) in ms since the epoch;
 * - `cold-raw`: the same call in raw amqplib steps, to split connecting from
 *   declaring the callback queue;
 * - `memory`: `calls` pipelined calls from one client (ours, `FibonacciRpcClient`,
 *   or raw), printing RSS and heap every tenth of the way, as JSON lines;
 * - `pipelined`: our client (`FibonacciRpcClient`) makes `warmup` calls, then
 *   `calls` calls at `concurrency` in flight, and prints one JSON line: its
 *   calls/s, the CPU this process spent on them, and whether it traced
 *   (the tracing measurement runs it with and without `OTEL_DENO=true`,
 *   which Deno reads only at start-up);
 * - `slow-server`: our server (`FibonacciRpcServer`) with a handler that
 *   busy-waits `workMs` per request, with or without skipping late requests;
 *   prints its counts on SIGTERM.
 *
 * Nothing is imported statically, so the first statement runs as soon as Deno
 * has started, and each import is timed where it happens.
 *
 * Permissions: `-A` (network, environment, `Deno.memoryUsage`).
 *
 * @module
 */
const startedAt = performance.timeOrigin + performance.now();
const now = () => performance.timeOrigin + performance.now();

interface Config {
  mode: "cold" | "cold-raw" | "memory" | "pipelined" | "slow-server";
  url: string;
  queue: string;
  /** memory: which client. */
  client?: "ours" | "raw-full" | "raw-plain";
  calls?: number;
  concurrency?: number;
  /** pipelined: calls made before the timed ones. */
  warmup?: number;
  /** slow-server */
  prefetch?: number;
  workMs?: number;
  skipLate?: boolean;
}

/** [phase, ms since the epoch at its end], starting with this module's first statement. */
type Stamps = [string, number][];

/** Loads the Node built-ins that amqplib and our library need, in three timed steps. */
async function builtIns(): Promise<Stamps> {
  const stamps: Stamps = [["deno started", startedAt]];
  await import("node:buffer");
  stamps.push(["node:buffer loaded (Deno's Node layer starts)", now()]);
  await import("node:stream");
  stamps.push(["node:stream loaded", now()]);
  await Promise.all(["events", "util", "net", "tls", "url"].map((name) => import(`node:${name}`)));
  stamps.push(["node:events, util, net, tls, url loaded", now()]);
  return stamps;
}

async function cold(config: Config): Promise<Stamps> {
  const stamps = await builtIns();
  await import("npm:amqplib@2.3.1");
  stamps.push(["amqplib loaded", now()]);
  const { FibonacciRpcClient } = await import("../rpc/mod.ts");
  stamps.push(["rpc/mod.ts loaded", now()]);
  const client = await FibonacciRpcClient.connect({ url: config.url, queue: config.queue });
  stamps.push(["connected (connection, channel, callback queue, consumer)", now()]);
  await client.call(30);
  stamps.push(["call answered", now()]);
  await client.close();
  stamps.push(["connection closed", now()]);
  return stamps;
}

async function coldRaw(config: Config): Promise<Stamps> {
  const stamps = await builtIns();
  const { Buffer } = await import("node:buffer");
  const { default: amqp } = await import("npm:amqplib@2.3.1");
  stamps.push(["amqplib loaded", now()]);
  const connection = await amqp.connect(config.url, { noDelay: true });
  stamps.push(["TCP connect and AMQP handshake", now()]);
  const channel = await connection.createConfirmChannel();
  stamps.push(["confirm channel opened", now()]);
  const { queue: replyTo } = await channel.assertQueue("", { exclusive: true });
  stamps.push(["callback queue declared", now()]);
  const answered = Promise.withResolvers<void>();
  await channel.consume(replyTo, () => answered.resolve(), { noAck: true });
  stamps.push(["consumer started", now()]);
  channel.sendToQueue(config.queue, Buffer.from("30"), {
    correlationId: crypto.randomUUID(),
    replyTo,
    mandatory: true,
    expiration: "30000",
    headers: { "x-deadline": Date.now() + 30_000 },
  });
  const timer = setTimeout(() => answered.reject(new Error("no reply in 30 s")), 30_000);
  await answered.promise.finally(() => clearTimeout(timer));
  stamps.push(["call answered", now()]);
  await connection.close();
  stamps.push(["connection closed", now()]);
  return stamps;
}

/** Prints {calls, ms, rssMiB, heapMiB} every tenth of the calls, then a final line after a GC. */
async function memory(config: Config): Promise<void> {
  const calls = config.calls ?? 100_000;
  const concurrency = config.concurrency ?? 256;
  let call: (n: number) => Promise<unknown>;
  let close: () => Promise<void>;
  let pending = () => 0;
  if (config.client === "ours") {
    const { FibonacciRpcClient } = await import("../rpc/mod.ts");
    const client = await FibonacciRpcClient.connect({
      url: config.url,
      queue: config.queue,
      replyQueue: "exclusive",
    });
    call = (n) => client.call(n);
    close = () => client.close();
    pending = () => client.pendingCalls;
  } else {
    const { rawClient } = await import("./raw.ts");
    const full = config.client === "raw-full";
    const client = await rawClient({
      url: config.url,
      queue: config.queue,
      confirms: full,
      properties: full,
    });
    call = (n) => client.call(n);
    close = () => client.close();
  }
  const began = performance.now();
  const sample = (done: number) => {
    const { rss, heapUsed } = Deno.memoryUsage();
    console.log(JSON.stringify({
      calls: done,
      ms: performance.now() - began,
      rssMiB: rss / 2 ** 20,
      heapMiB: heapUsed / 2 ** 20,
    }));
  };
  sample(0);
  const every = Math.max(1, Math.floor(calls / 10));
  const deadline = began + 300_000;
  let started = 0, done = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (started < calls && performance.now() < deadline) {
      started++;
      await call(1);
      if (++done % every === 0) sample(done);
    }
  }));
  (globalThis as { gc?: () => void }).gc?.();
  const { rss, heapUsed } = Deno.memoryUsage();
  console.log(JSON.stringify({
    final: true,
    calls: done,
    rssMiB: rss / 2 ** 20,
    heapAfterGcMiB: heapUsed / 2 ** 20,
    pendingCalls: pending(),
  }));
  await close();
}

/** Keeps `concurrency` calls in flight until `calls` are done or 120 s passed; how many were. */
async function keepInFlight(call: () => Promise<unknown>, calls: number, concurrency: number) {
  const deadline = performance.now() + 120_000;
  let started = 0, done = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (started < calls && performance.now() < deadline) {
      started++;
      await call();
      done++;
    }
  }));
  return done;
}

/** Prints {tracing, warmup, calls, ms, callsPerSecond, cpuMs} for the timed calls, as JSON. */
async function pipelined(config: Config): Promise<void> {
  const concurrency = config.concurrency ?? 256;
  const { default: process } = await import("node:process");
  const { FibonacciRpcClient } = await import("../rpc/mod.ts");
  const { tracingEnabled } = await import("../rpc/_tracing.ts");
  const client = await FibonacciRpcClient.connect({
    url: config.url,
    queue: config.queue,
    replyQueue: "exclusive",
  });
  try {
    const warmup = await keepInFlight(() => client.call(1), config.warmup ?? 500, concurrency);
    const cpu = () => {
      const { user, system } = process.cpuUsage(); // the whole process: every thread
      return (user + system) / 1000;
    };
    const [began, cpuBefore] = [performance.now(), cpu()];
    const calls = await keepInFlight(() => client.call(1), config.calls ?? 3_000, concurrency);
    const [ms, cpuMs] = [performance.now() - began, cpu() - cpuBefore];
    console.log(JSON.stringify({
      tracing: tracingEnabled(),
      warmup,
      calls,
      ms,
      callsPerSecond: (1000 * calls) / ms,
      cpuMs,
    }));
  } finally {
    await client.close();
  }
}

async function slowServer(config: Config): Promise<void> {
  const { FibonacciRpcServer, fib } = await import("../rpc/mod.ts");
  const workMs = config.workMs ?? 20;
  const server = await FibonacciRpcServer.start({
    url: config.url,
    queue: config.queue,
    prefetch: config.prefetch,
    queueType: "quorum",
    log: null,
    skipLate: config.skipLate,
    handler: (n: number) => {
      const until = performance.now() + workMs;
      while (performance.now() < until) { /* a slow handler, on the CPU like real work */ }
      return fib(n);
    },
  });
  console.log(" [x] Awaiting RPC requests");
  const stop = async () => {
    await server.close();
    console.log(JSON.stringify({ answered: server.answered, skipped: server.skipped }));
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
}

if (import.meta.main) {
  const config: Config = JSON.parse(Deno.args[0] ?? "{}");
  if (config.mode === "cold" || config.mode === "cold-raw") {
    console.log(JSON.stringify(await (config.mode === "cold" ? cold : coldRaw)(config)));
    Deno.exit(0); // as rpc/fib_client.ts does once its calls are done
  } else if (config.mode === "memory") await memory(config);
  else if (config.mode === "pipelined") await pipelined(config);
  else if (config.mode === "slow-server") await slowServer(config);
  else {
    console.error(`child.ts: unknown mode ${JSON.stringify(config.mode)} (see rpc_bench.ts)`);
    Deno.exit(2);
  }
}
