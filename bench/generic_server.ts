/**
 * # bench/generic_server.ts: fib(n) served by the generic layer
 *
 * The generic `RpcServer` of `rpc/mod.ts` with a handler on the request's
 * bytes: it reads `n` as ASCII digits, computes `fib(n)` and returns the
 * decimal text, the work the Fibonacci layer (`FibonacciRpcServer`) does,
 * written as a user of the generic layer would write it. `rpc_bench.ts`
 * starts it as its own process and calls it with the generic `RpcClient`:
 *
 * ```sh
 * deno run -A bench/generic_server.ts --queue Q [--prefetch 50] [--queue-type quorum|classic]
 *   [--concurrency N] [--delay-ms MS] [--quiet] [--url U]
 * ```
 *
 * `--delay-ms` makes the handler await that long before it answers, as one
 * that queries a database does (the I/O-bound row against rabbitmq-client);
 * `--concurrency` is passed on as `RpcServer`'s option of that name (up to N
 * handlers at once), which issue 25 adds: until it is merged, the server
 * ignores it and runs one handler at a time.
 *
 * It logs as `RpcServer` does by default (` [x] Awaiting RPC requests` once
 * consuming, then ` [.] request of N bytes`, at most 20 lines a second;
 * `--quiet`: nothing), and stops on SIGTERM or SIGINT.
 *
 * Permissions: `--allow-net` and `--allow-env`; `-A` grants both.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  BadRequestError,
  DEFAULT_PREFETCH,
  fib,
  MAX_N,
  RpcServer,
  type ServerOptions,
} from "../rpc/mod.ts";

/** `n` from a request's bytes: ASCII digits, at most {@linkcode MAX_N}; else a bad request. */
export function readN(request: Uint8Array): number {
  let n = 0;
  for (const byte of request) {
    const digit = byte - 48;
    if (digit < 0 || digit > 9 || (n = n * 10 + digit) > MAX_N) {
      throw new BadRequestError(`n must be a decimal integer from 0 to ${MAX_N}`);
    }
  }
  if (request.length === 0) throw new BadRequestError("empty request");
  return n;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      url: { type: "string" },
      queue: { type: "string" },
      prefetch: { type: "string", default: String(DEFAULT_PREFETCH) },
      "queue-type": { type: "string", default: "quorum" },
      quiet: { type: "boolean", default: false },
      concurrency: { type: "string" },
      "delay-ms": { type: "string", default: "0" },
    },
  });
  const queueType = values["queue-type"];
  if (!values.queue || (queueType !== "quorum" && queueType !== "classic")) {
    console.error("generic_server.ts: --queue is required; --queue-type is quorum or classic");
    Deno.exit(2);
  }
  const delayMs = Number(values["delay-ms"]);
  const options: ServerOptions = {
    url: values.url,
    queue: values.queue,
    prefetch: Number(values.prefetch),
    queueType,
    log: values.quiet ? null : console.log,
    handler: delayMs > 0
      ? async (request) => {
        await new Promise((resolve) => setTimeout(resolve, delayMs));
        return String(fib(readN(request)));
      }
      : (request) => String(fib(readN(request))),
  };
  const server = await RpcServer.start(
    values.concurrency === undefined
      ? options
      : { ...options, concurrency: Number(values.concurrency) },
  );
  const stop = () => server.close().finally(() => Deno.exit(0));
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
}
