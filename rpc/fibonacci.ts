/**
 * The Fibonacci layer: the tutorial's fib(n) server and client on top of
 * the generic {@linkcode RpcServer} and {@linkcode RpcClient}. A request is
 * `n` as decimal text; a reply is fib(n) as decimal text.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { RpcClient } from "./client.ts";
import type { RequestContext } from "./context.ts";
import { BadRequestError, RpcError } from "./errors.ts";
import type { CallOptions, ClientOptions, ServerOptions } from "./options.ts";
import { RpcServer } from "./server.ts";
import type { ServerHealth } from "./health.ts";

/** The largest n the server computes; fib(10000) has 2,090 decimal digits. */
export const MAX_N = 10_000;

/** Request bodies longer than this get an error reply. */
export const MAX_REQUEST_BYTES = 64;

/** The queue the tutorial's programs use. */
export const DEFAULT_QUEUE = "rpc_queue";

/**
 * The work: the n-th Fibonacci number, exactly. fib(0) = 0, fib(1) = 1.
 * BigInt, because fib(79) already outgrows the 2^53 a JS number holds.
 *
 * @example
 * ```ts
 * fib(90); // 2880067194370816120n
 * ```
 * @throws {RangeError} unless n is an integer from 0 to {@linkcode MAX_N}.
 */
export function fib(n: number): bigint {
  if (!Number.isInteger(n) || n < 0 || n > MAX_N) {
    throw new RangeError(`n must be an integer from 0 to ${MAX_N}, got ${n}`);
  }
  let previous = 0n;
  let current = 1n;
  for (let i = 0; i < n; i++) [previous, current] = [current, previous + current];
  return previous;
}

/** Options for {@linkcode FibonacciRpcServer.start}: those of {@linkcode RpcServer}, with Fibonacci defaults. */
export interface FibonacciServerOptions
  extends Omit<ServerOptions, "queue" | "handler" | "describe"> {
  /** The request queue. Default: `"rpc_queue"`, as in the tutorial. */
  queue?: string;
  /**
   * Computes the answer for a valid `n` (0 to {@linkcode MAX_N}), with the
   * request's {@linkcode RequestContext}. Default: {@linkcode fib}. It may
   * be async; if it throws, the caller gets an error reply (see
   * {@linkcode RpcServer}).
   */
  handler?: (n: number, context: RequestContext) => bigint | Promise<bigint>;
}

/**
 * A running Fibonacci RPC server: takes `n` from its queue, replies with
 * fib(n). Bad requests get an error reply.
 *
 * @example
 * ```ts
 * await using server = await FibonacciRpcServer.start({ queue: "rpc_queue" });
 * ```
 */
export class FibonacciRpcServer implements AsyncDisposable {
  readonly #server: RpcServer;

  private constructor(server: RpcServer) {
    this.#server = server;
  }

  /**
   * Connects, declares the queue, sets prefetch and consumes; see
   * {@linkcode RpcServer.start}.
   */
  static async start(options: FibonacciServerOptions = {}): Promise<FibonacciRpcServer> {
    const compute = options.handler ?? fib;
    const server = await RpcServer.start({
      ...options,
      queue: options.queue ?? DEFAULT_QUEUE,
      handler: (request, context) => {
        const result = compute(readRequest(request), context);
        return result instanceof Promise ? result.then(String) : String(result);
      },
      describe: describeRequest,
    });
    return new FibonacciRpcServer(server);
  }

  /** The queue it consumes. */
  get queue(): string {
    return this.#server.queue;
  }
  /** The `connection_name` it shows the broker. */
  get connectionName(): string {
    return this.#server.connectionName;
  }
  /** Requests answered so far: results and error replies. */
  get answered(): number {
    return this.#server.answered;
  }
  /** Requests acked without being computed, because their caller had given up. */
  get skipped(): number {
    return this.#server.skipped;
  }

  /** Whether it is connected and consuming; see {@linkcode RpcServer.health}. */
  health(): ServerHealth {
    return this.#server.health();
  }

  /** Finishes the requests in progress, then closes; see {@linkcode RpcServer.close}. */
  close(): Promise<void> {
    return this.#server.close();
  }
  /** Closes the server, as {@linkcode FibonacciRpcServer.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Bad requests. Reads `n` from a request body: ASCII digits, white space
 * around them allowed. Note that the body has been read whole by then
 * (amqplib buffers every message): what bounds a body's size is the
 * broker's `max_message_size`, not this check.
 */
function readRequest(body: Uint8Array): number {
  if (body.length > MAX_REQUEST_BYTES) {
    throw new BadRequestError(
      `request too large: ${body.length} bytes, at most ${MAX_REQUEST_BYTES}`,
    );
  }
  const n = asciiDecimal(body); // the common case, read straight from the bytes
  if (n !== undefined && n <= MAX_N) return n;
  const expected = `n must be a decimal integer from 0 to ${MAX_N}`;
  if (body.length === 0) throw new BadRequestError(`empty request: ${expected}`);
  const text = new TextDecoder().decode(body).trim(); // white space beyond ASCII is allowed too
  const number = /^\d+$/.test(text) ? Number(text) : NaN;
  if (number <= MAX_N) return number;
  throw new BadRequestError(`${expected}, got ${JSON.stringify(text)}`);
}

/** The log line of a request: `fib(n)`, or none for a bad request (its refusal is logged). */
function describeRequest(request: Uint8Array): string | undefined {
  try {
    return `fib(${readRequest(request)})`;
  } catch {
    return undefined;
  }
}

/** The number ASCII digits spell, with ASCII white space around them; else undefined. */
function asciiDecimal(bytes: Uint8Array): number | undefined {
  const isSpace = (byte: number) => byte === 32 || (byte >= 9 && byte <= 13);
  let start = 0;
  let end = bytes.length;
  while (start < end && isSpace(bytes[start])) start++;
  while (end > start && isSpace(bytes[end - 1])) end--;
  if (start === end) return undefined;
  let n = 0;
  for (let i = start; i < end; i++) {
    const digit = bytes[i] - 48;
    if (digit < 0 || digit > 9) return undefined;
    n = n * 10 + digit;
  }
  return n;
}

/** Options for {@linkcode FibonacciRpcClient.connect}: those of {@linkcode RpcClient}, and the queue. */
export interface FibonacciClientOptions extends ClientOptions {
  /** The server's request queue. Default: `"rpc_queue"`. */
  queue?: string;
}

/** Options for one {@linkcode FibonacciRpcClient.call}. */
export type FibonacciCallOptions = Omit<CallOptions, "label">;

/**
 * A client for the Fibonacci RPC server: one connection, one channel, one
 * callback queue, any number of calls at once.
 *
 * @example
 * ```ts
 * await using client = await FibonacciRpcClient.connect({ queue: "rpc_queue" });
 * console.log(await client.call(30)); // 832040n
 * ```
 */
export class FibonacciRpcClient implements AsyncDisposable {
  /** The server's request queue. */
  readonly queue: string;
  readonly #client: RpcClient;

  private constructor(client: RpcClient, queue: string) {
    this.#client = client;
    this.queue = queue;
  }

  /** Connects, then sets up the callback queue; see {@linkcode RpcClient.connect}. */
  static async connect(options: FibonacciClientOptions = {}): Promise<FibonacciRpcClient> {
    const { queue = DEFAULT_QUEUE, ...clientOptions } = options;
    return new FibonacciRpcClient(await RpcClient.connect(clientOptions), queue);
  }

  /**
   * Calls fib(n) on a server.
   *
   * @example
   * ```ts
   * await using client = await FibonacciRpcClient.connect();
   * const result = await client.call(30, { timeout: 5_000 }); // 832040n
   * ```
   * @throws {RangeError} unless n is a non-negative safe integer.
   * @throws {RpcError} with `code` saying why the call failed; an aborted
   *   call rejects with the signal's reason instead.
   */
  call(n: number, options: FibonacciCallOptions = {}): Promise<bigint> {
    if (!Number.isSafeInteger(n) || n < 0) {
      return Promise.reject(new RangeError(`n must be a non-negative integer, got ${n}`));
    }
    const label = `fib(${n})`;
    return this.#client.call(this.queue, String(n), { ...options, label })
      .then((reply) => readAnswer(label, reply));
  }

  /** How many servers consume the request queue now; undefined if it does not exist. */
  consumerCount(): Promise<number | undefined> {
    return this.#client.consumerCount(this.queue);
  }
  /** The `connection_name` it shows the broker. */
  get connectionName(): string {
    return this.#client.connectionName;
  }
  /** Replies that matched no pending call: duplicates, late or stray replies. */
  get droppedReplies(): number {
    return this.#client.droppedReplies;
  }
  /** The queue name the requests carry as `reply_to`. */
  get callbackQueue(): string {
    return this.#client.callbackQueue;
  }
  /** Calls waiting for their reply. */
  get pendingCalls(): number {
    return this.#client.pendingCalls;
  }

  /** Fails the calls in flight with code `"closed"`, then closes the connection. */
  close(): Promise<void> {
    return this.#client.close();
  }
  /** Closes the client, as {@linkcode FibonacciRpcClient.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** A reply's answer: decimal digits, as our server sends them (white space around them is fine too). */
function readAnswer(label: string, reply: Uint8Array): bigint {
  const bytes = Buffer.from(reply.buffer, reply.byteOffset, reply.byteLength);
  if (isAsciiDigits(bytes)) return BigInt(bytes.toString("latin1"));
  const body = bytes.toString("utf8");
  const digits = body.trim();
  if (/^\d+$/.test(digits)) return BigInt(digits);
  throw new RpcError(
    "bad-reply",
    `${label}: the server replied ${JSON.stringify(body.slice(0, 80))}`,
  );
}

/** Whether the bytes are one or more ASCII digits, and nothing else. */
function isAsciiDigits(bytes: Uint8Array): boolean {
  for (const byte of bytes) if (byte < 48 || byte > 57) return false;
  return bytes.length > 0;
}
