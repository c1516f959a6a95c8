/**
 * # rpc/fib_server.ts: the production Fibonacci server, on the command line
 *
 * Takes `n` from a queue (`rpc_queue` by default), replies with fib(n),
 * fails over between the nodes of a cluster, skips requests whose caller
 * gave up, and shuts down cleanly on SIGINT or SIGTERM.
 *
 * ```sh
 * deno run --allow-net --allow-env rpc/fib_server.ts
 * deno run --allow-net --allow-env --allow-read rpc/fib_server.ts --url amqps://broker \
 *   --cacert ca.pem --cert client.pem --key client.key
 * deno run --allow-net --allow-env --allow-read rpc/fib_server.ts --workers 4
 * deno run rpc/fib_server.ts --help
 * ```
 *
 * @module
 */
import {
  fail,
  oneOf,
  parseCommandLine,
  readOrExit,
  TLS_OPTIONS,
  TLS_USAGE,
  tlsFromCommandLine,
  urlsFromCommandLine,
  UsageError,
  wholeNumber,
} from "./_cli.ts";
import { FibonacciRpcServer, type FibonacciServerOptions } from "./fibonacci.ts";
import { type HealthEndpoint, serveHealth } from "./health.ts";
import { DEFAULT_PREFETCH, isPrefetch, PREFETCH_RULE } from "./options.ts";
import { WorkerPool } from "./workers.ts";

const USAGE = `Usage: deno run --allow-net --allow-env rpc/fib_server.ts [options]

Takes requests from a RabbitMQ queue and answers each with fib(n).

Options:
  --url URL        broker URL; give it once per cluster node to fail over
                   between them (default: $AMQP_URL, commas between URLs,
                   else amqp://localhost)
  --queue NAME     request queue (default: rpc_queue)
  --prefetch N     unacked requests at once, 1 to 65535 (default: ${DEFAULT_PREFETCH},
                   or --concurrency if larger)
  --concurrency N  handlers running at once, 1 to 65535, at most --prefetch
                   (default: the prefetch)
  --handler-timeout MS
                   a handler's time limit: its caller then gets an error
                   reply (code handler-timeout) (default: none)
  --workers N      compute fib(n) in N worker threads, off the event loop,
                   so heartbeats flow while it computes (needs --allow-read;
                   default: none, on the event loop)
  --queue-type T   how to declare a new queue: "quorum" (default; durable,
                   as today's tutorials declare it) or "classic" (non-durable,
                   as older copies and amqplib's bundled examples do)
  --no-skip-late   compute requests whose caller's deadline has passed
  --health-port P  serve GET /healthz on port P (200 while consuming,
                   503 while reconnecting or closing)
  --health-host H  the address it listens on (default: 127.0.0.1; 0.0.0.0
                   for probes from outside, such as Kubernetes' kubelet)
  --quiet          do not log each request
  -h, --help       show this help

${TLS_USAGE}

Exit status: 0 after SIGINT or SIGTERM, 1 if no broker answers (or
--allow-net is missing), 2 for a usage error.`;

/** The options the command line takes (see USAGE). */
const COMMAND_LINE = {
  url: { type: "string", multiple: true },
  queue: { type: "string" },
  prefetch: { type: "string" },
  concurrency: { type: "string" },
  workers: { type: "string" },
  "handler-timeout": { type: "string" },
  "queue-type": { type: "string" },
  "no-skip-late": { type: "boolean" },
  "health-port": { type: "string" },
  "health-host": { type: "string" },
  quiet: { type: "boolean" },
  help: { type: "boolean", short: "h" },
  ...TLS_OPTIONS,
} as const;

/** Reads the command line into server options; throws a one-line UsageError on bad input. */
function readCommandLine(
  args: string[],
):
  | FibonacciServerOptions & { healthPort?: number; healthHost?: string; workers?: number }
  | "help" {
  const { values } = parseCommandLine(args, COMMAND_LINE);
  if (values.help) return "help";
  const count = (name: string, text: string | undefined) =>
    text === undefined ? undefined : wholeNumber(name, text, isPrefetch, PREFETCH_RULE);
  const prefetch = count("--prefetch", values.prefetch as string | undefined);
  const concurrency = count("--concurrency", values.concurrency as string | undefined);
  if (prefetch !== undefined && concurrency !== undefined && prefetch < concurrency) {
    throw new UsageError(
      `--prefetch (${prefetch}) must be at least --concurrency (${concurrency})`,
    );
  }
  const timeout = values["handler-timeout"] as string | undefined;
  const handlerTimeout = timeout === undefined
    ? undefined
    : wholeNumber("--handler-timeout", timeout, (ms) =>
      ms >= 1 && ms < 2 ** 31, "a whole number of ms from 1 to 2147483647");
  if (values.queue === "") throw new UsageError("--queue must not be empty");
  const url = urlsFromCommandLine(values.url as string[] | undefined);
  return {
    url,
    tls: tlsFromCommandLine(values, url),
    queue: values.queue as string | undefined,
    prefetch,
    concurrency,
    handlerTimeout,
    queueType: oneOf("--queue-type", (values["queue-type"] as string) ?? "quorum", [
      "quorum",
      "classic",
    ]),
    skipLate: !values["no-skip-late"],
    log: values.quiet ? null : console.log,
    healthPort: values["health-port"] === undefined ? undefined : wholeNumber(
      "--health-port",
      values["health-port"] as string,
      (port) => port >= 1 && port <= 65535,
      "a TCP port from 1 to 65535",
    ),
    healthHost: values["health-host"] as string | undefined,
    workers: values.workers === undefined ? undefined : wholeNumber(
      "--workers",
      values.workers as string,
      (workers) => workers >= 1 && workers <= 256,
      "an integer from 1 to 256",
    ),
  };
}

/**
 * Shutdown: the first signal finishes the requests in progress; a second exits at once.
 * Listening starts before the server does, so a signal during startup exits cleanly too.
 */
function stopOnSignals(
  starting: Promise<FibonacciRpcServer>,
  health: () => HealthEndpoint | undefined,
  pool: WorkerPool | undefined,
): void {
  let started: FibonacciRpcServer | null = null;
  starting.then((server) => {
    started = server;
  }, () => {}); // main reports a failure to start
  let stopping = false;
  const stop = async (signal: Deno.Signal) => {
    if (stopping) {
      console.log(` [!] ${signal} again: exiting now; unacked requests go back to the queue`);
      Deno.exit(1);
    }
    stopping = true;
    console.log(
      ` [x] ${signal}: finishing the request in progress (the others go back to the queue), then exiting`,
    );
    // Still connecting: nothing is in progress, and whatever was delivered goes back.
    await started?.close(); // meanwhile /healthz answers 503
    await health()?.close();
    await pool?.close();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
  // Windows has no SIGTERM to listen for.
  if (Deno.build.os !== "windows") Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
}

/**
 * `--workers N`: fib(n) computed in a pool of N workers (rpc/fib_worker.ts),
 * with the request's context, so its deadline and `--handler-timeout` stop
 * a computation that runs too long.
 */
async function startPool(workers: number, options: FibonacciServerOptions): Promise<WorkerPool> {
  const pool = await WorkerPool.start(new URL("./fib_worker.ts", import.meta.url), {
    workers,
    timeLimit: options.handlerTimeout,
  }).catch((error) => fail("fib_server", error));
  const encoder = new TextEncoder();
  options.handler = async (n, context) =>
    BigInt(String(await pool.handler(encoder.encode(String(n)), context)));
  return pool;
}

/** Runs the server with these command-line arguments. */
export async function main(args: string[]): Promise<void> {
  const { healthPort, healthHost, workers, ...options } = readOrExit(
    "fib_server",
    args,
    readCommandLine,
    USAGE,
  );
  const pool = workers === undefined ? undefined : await startPool(workers, options);
  const starting = FibonacciRpcServer.start(options);
  let health: HealthEndpoint | undefined;
  stopOnSignals(starting, () => health, pool);
  try {
    const server = await starting;
    if (healthPort !== undefined) {
      health = serveHealth(server, { port: healthPort, hostname: healthHost });
      console.log(` [x] Health: http://${healthHost ?? "127.0.0.1"}:${health.port}/healthz`);
    }
  } catch (error) {
    fail("fib_server", error);
  }
}

if (import.meta.main) await main(Deno.args);
