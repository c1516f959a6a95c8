/**
 * RPC over RabbitMQ for Deno, the pattern of RabbitMQ's tutorial six,
 * hardened for production: failover between the nodes of a cluster,
 * reconnection, publisher confirms, deadlines that servers honour,
 * timeouts that say why, hostile input handled, graceful shutdown.
 *
 * A server runs a handler on each request's bytes; a client calls it and
 * gets the reply's bytes; or, with a contract ({@linkcode procedure}),
 * JSON values checked by any Standard Schema validator. The Fibonacci
 * server and client of the tutorial are built on the same two classes.
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
 * @example A server of its own, held until SIGINT or SIGTERM, then closed
 * ```ts
 * import { RpcServer } from "./mod.ts";
 *
 * const server = await RpcServer.start({
 *   queue: "upper",
 *   handler: (request) => new TextDecoder().decode(request).toUpperCase(),
 * });
 * const signal = await new Promise<string>((resolve) => {
 *   Deno.addSignalListener("SIGINT", () => resolve("SIGINT"));
 *   Deno.addSignalListener("SIGTERM", () => resolve("SIGTERM")); // not on Windows
 * });
 * console.log(`${signal}: closing`);
 * await server.close(); // finishes the requests in progress, gives the others back
 * Deno.exit(0); // the signal listeners would keep the process alive
 * ```
 *
 * @example A JSON procedure, typed and checked by its schemas (zod, valibot, ...)
 * ```ts
 * import { z } from "npm:zod@4.6.7";
 * import { procedure, RpcClient, RpcServer } from "./mod.ts";
 *
 * const sum = procedure("sum", {
 *   request: z.object({ numbers: z.array(z.number()) }),
 *   reply: z.object({ total: z.number() }),
 * });
 * await using server = await RpcServer.serve(sum, ({ numbers }) => ({
 *   total: numbers.reduce((total, n) => total + n, 0),
 * }));
 * await using client = await RpcClient.connect({ timeout: 5_000 });
 * console.log(await client.invoke(sum, { numbers: [1, 2, 3] })); // { total: 6 }
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
  type Reply,
  type ReplyToRule,
  type ServerOptions,
  type TlsOptions,
} from "./options.ts";
export {
  BadRequestError,
  ERROR_CODE_HEADER,
  type NoReplyDiagnosis,
  RpcError,
  type RpcErrorCode,
} from "./errors.ts";
export type { RequestContext } from "./context.ts";
export { DEFAULT_ABORT_GRACE_MS, WorkerPool, type WorkerPoolOptions } from "./workers.ts";

export {
  HEALTH_PATH,
  type HealthEndpoint,
  type HealthOptions,
  serveHealth,
  type ServerHealth,
} from "./health.ts";
export {
  JSON_CONTENT_TYPE,
  type Procedure,
  procedure,
  type ProcedureHandler,
  type ProcedureSchemas,
  type ProcedureServerOptions,
  type SchemaInput,
  type SchemaOutput,
} from "./procedure.ts";
export type {
  InferInput,
  InferOutput,
  StandardFailure,
  StandardIssue,
  StandardResult,
  StandardSchemaProps,
  StandardSchemaV1,
  StandardSuccess,
  StandardTypes,
} from "./_standard_schema.ts";
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
