/**
 * # rpc/fib_client.ts: the production Fibonacci client, on the command line
 *
 * Asks a server for fib(n), several n at once over one callback queue,
 * with a deadline per call, failover between cluster nodes, and a one-line
 * reason for every failure.
 *
 * ```sh
 * deno run --allow-net --allow-env rpc/fib_client.ts 30     # [.] Got 832040
 * deno run --allow-net --allow-env rpc/fib_client.ts --verbose 10 20 30   # how replies find calls
 * deno run --allow-net --allow-env --allow-read rpc/fib_client.ts --url amqps://broker \
 *   --cacert ca.pem --cert client.pem --key client.key 30
 * deno run rpc/fib_client.ts --help
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
import { ignoreError } from "./_connection.ts";
import { RpcError } from "./errors.ts";
import { type FibonacciClientOptions, FibonacciRpcClient } from "./fibonacci.ts";
import { DEFAULT_TIMEOUT_MS } from "./options.ts";
import { hidePassword } from "./_urls.ts";

const USAGE = `Usage: deno run --allow-net --allow-env rpc/fib_client.ts [options] N [N ...]

Asks an RPC server for fib(N); several N are sent at once over one callback queue.

Options:
  --url URL        broker URL; give it once per cluster node to fail over
                   between them (default: $AMQP_URL, commas between URLs,
                   else amqp://localhost)
  --queue NAME     the server's request queue (default: rpc_queue)
  --timeout MS     deadline of each call in ms (default: ${DEFAULT_TIMEOUT_MS})
  --retry          if the connection drops, send again once reconnected
                   (within the deadline) instead of failing at once
  --reply-queue Q  "exclusive" (the tutorial's callback queue, default) or
                   "direct" (RabbitMQ's direct reply-to)
  --verbose        show each request, how each reply is matched to it, and
                   which broker the client is on
  -h, --help       show this help

${TLS_USAGE}

Exit status: 0 if every call was answered, 1 if one failed or no broker
answers (or --allow-net is missing), 2 for a usage error, 130 on Ctrl-C.`;

/** The numbers to ask for, and the client's options. */
interface Request {
  numbers: number[];
  options: FibonacciClientOptions & { timeout: number };
}

/** Reads the command line; throws a one-line UsageError on bad input. */
function readCommandLine(args: string[]): Request | "help" {
  const { values, positionals } = parseCommandLine(args, {
    url: { type: "string", multiple: true },
    queue: { type: "string" },
    timeout: { type: "string" },
    retry: { type: "boolean" },
    "reply-queue": { type: "string" },
    verbose: { type: "boolean" },
    help: { type: "boolean", short: "h" },
    ...TLS_OPTIONS,
  }, true);
  if (values.help) return "help";
  if (positionals.length === 0) {
    throw new UsageError("give at least one number, e.g. fib_client.ts 30");
  }
  const numbers = positionals.map((text) => {
    if (!/^\d+$/.test(text)) {
      throw new UsageError(`n must be a non-negative integer, got "${hidePassword(text)}"`);
    }
    if (!Number.isSafeInteger(Number(text))) {
      throw new UsageError(`n is too large: ${text} (the server computes fib(n) up to n = 10000)`);
    }
    return Number(text);
  });
  const timeout = wholeNumber(
    "--timeout",
    (values.timeout as string | undefined) ?? String(DEFAULT_TIMEOUT_MS),
    (ms) => ms >= 1,
    "a positive whole number of ms",
  );
  const replyQueue = oneOf("--reply-queue", (values["reply-queue"] as string) ?? "exclusive", [
    "exclusive",
    "direct",
  ]);
  if (values.queue === "") throw new UsageError("--queue must not be empty");
  // A one-shot call says what went wrong in its last line; --verbose
  // also shows each request, each reply, and the broker it is on.
  const verbose = values.verbose ? (line: string) => console.error(line) : undefined;
  const url = urlsFromCommandLine(values.url as string[] | undefined);
  return {
    numbers,
    options: {
      url,
      tls: tlsFromCommandLine(values, url),
      queue: values.queue as string | undefined,
      timeout,
      retry: (values.retry as boolean | undefined) ?? false,
      replyQueue,
      trace: verbose,
      log: verbose,
    },
  };
}

/** Without a server the requests would just wait in the queue: say so now, not at the deadline. */
async function warnIfNoServer(client: FibonacciRpcClient, timeout: number): Promise<void> {
  const count = await client.consumerCount().catch(ignoreError);
  if (count === 0 && client.pendingCalls > 0) {
    console.error(
      ` [!] No server is consuming "${client.queue}"; waiting up to ${timeout} ms for one ` +
        `(start it: deno run --allow-net --allow-env rpc/fib_server.ts)`,
    );
  }
}

/** Prints each outcome in order: the answer on stdout, a failure in one line on stderr. */
function report(numbers: number[], outcomes: PromiseSettledResult<bigint>[]): boolean {
  for (const [i, outcome] of outcomes.entries()) {
    if (outcome.status === "fulfilled") {
      console.log(` [.] Got ${outcome.value}`);
      continue;
    }
    const error = outcome.reason as Error;
    const remote = error instanceof RpcError && error.code === "remote";
    console.error(
      `fib_client: ${remote ? `fib(${numbers[i]}): the server answered: ` : ""}${error.message}`,
    );
  }
  return outcomes.every((outcome) => outcome.status === "fulfilled");
}

/** Runs the client with these command-line arguments. */
export async function main(args: string[]): Promise<void> {
  const { numbers, options } = readOrExit("fib_client", args, readCommandLine, USAGE);
  let client: FibonacciRpcClient;
  try {
    client = await FibonacciRpcClient.connect(options);
  } catch (error) {
    fail("fib_client", error);
  }
  let interrupted = false;
  const interrupt = () => {
    console.error("fib_client: interrupted; closing the connection");
    interrupted = true;
    client.close(); // fails the calls in flight, which ends the wait below
  };
  Deno.addSignalListener("SIGINT", interrupt);
  // SIGTERM too, so that the exit flushes traces; Windows has none to listen for.
  if (Deno.build.os !== "windows") Deno.addSignalListener("SIGTERM", interrupt);
  const calls = numbers.map((n) => {
    console.log(` [x] Requesting fib(${n})`);
    return client.call(n);
  });
  warnIfNoServer(client, options.timeout);
  const outcomes = await Promise.allSettled(calls);
  await client.close();
  if (interrupted) Deno.exit(130);
  Deno.exit(report(numbers, outcomes) ? 0 : 1);
}

if (import.meta.main) await main(Deno.args);
