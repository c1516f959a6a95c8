/**
 * The Fibonacci handler as a handler module for a {@linkcode WorkerPool}:
 * fib(n) computed in a worker, off the server's event loop. The request is
 * `n` in decimal, already checked by the Fibonacci layer (0 to `MAX_N`);
 * the reply is fib(n) in decimal.
 *
 * @example Fibonacci in a pool of workers
 * ```ts
 * import { FibonacciRpcServer, WorkerPool } from "./mod.ts";
 *
 * await using pool = await WorkerPool.start(new URL("./fib_worker.ts", import.meta.url));
 * const encoder = new TextEncoder();
 * await using server = await FibonacciRpcServer.start({
 *   handler: async (n) => BigInt(String(await pool.handler(encoder.encode(String(n))))),
 * });
 * ```
 *
 * @module
 */
import { fib } from "./fibonacci.ts";

/**
 * fib(n) as decimal text, for `n` in decimal.
 *
 * @example
 * ```ts
 * fibonacciHandler(new TextEncoder().encode("90")); // "2880067194370816120"
 * ```
 * @throws {RangeError} unless the request is an integer from 0 to `MAX_N`.
 */
export default function fibonacciHandler(request: Uint8Array): string {
  return fib(Number(new TextDecoder().decode(request))).toString();
}
