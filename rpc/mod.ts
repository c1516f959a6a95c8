/**
 * RPC over RabbitMQ for Deno, the pattern of RabbitMQ's tutorial six,
 * hardened for production: failover between the nodes of a cluster,
 * reconnection, publisher confirms, deadlines that servers honour,
 * timeouts that say why, hostile input handled, graceful shutdown.
 *
 * A server runs a handler on each request's bytes; a client calls it and
 * gets the reply's bytes. The Fibonacci server and client of the tutorial
 * are built on the same two classes.
 *
 * @example A server and a client for any function
 * ```ts
 * import { RpcClient, RpcServer } from "./mod.ts";
 *
 * await using server = await RpcServer.start({
 *   queue: "upper",
 *   handler: (request) => new TextDecoder().decode(request).toUpperCase(),
 * });
 * await using client = await RpcClient.connect({ timeout: 5_000 });
 * const reply = await client.call("upper", "hello");
 * console.log(new TextDecoder().decode(reply)); // "HELLO"
 * ```
 *
 * @example The tutorial's Fibonacci pair
 * ```ts
 * import { FibonacciRpcClient, FibonacciRpcServer } from "./mod.ts";
 *
 * await using server = await FibonacciRpcServer.start(); // consumes "rpc_queue"
 * await using client = await FibonacciRpcClient.connect();
 * console.log(await client.call(30)); // 832040n
 * ```
 *
 * @module
 */
export { RpcServer } from "./server.ts";
export { RpcClient } from "./client.ts";
export {
  type CallOptions,
  type ClientOptions,
  DEFAULT_CLOSE_TIMEOUT_MS,
  DEFAULT_MAX_REPLY_BYTES,
  DEFAULT_PREFETCH,
  DEFAULT_TIMEOUT_MS,
  type Handler,
  type ServerOptions,
} from "./options.ts";
export type { Reply, ReplyToRule } from "./replies.ts";
export {
  BadRequestError,
  ERROR_CODE_HEADER,
  type NoReplyDiagnosis,
  RpcError,
  type RpcErrorCode,
} from "./errors.ts";
export type { RequestContext } from "./context.ts";
export { DEADLINE_GRACE_MS, DEADLINE_HEADER, TIMEOUT_HEADER } from "./deadlines.ts";
export {
  DEFAULT_QUEUE,
  fib,
  type FibonacciCallOptions,
  type FibonacciClientOptions,
  FibonacciRpcClient,
  FibonacciRpcServer,
  type FibonacciServerOptions,
  MAX_N,
  MAX_REQUEST_BYTES,
} from "./fibonacci.ts";
