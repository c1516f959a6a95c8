/**
 * # rpc_client.ts: the client half of RabbitMQ tutorial six ("RPC"), for Deno
 *
 * Sends `n` to the queue `rpc_queue` and waits for fib(n) on its callback
 * queue, matching the reply to the call by `correlation_id`.
 *
 * Run it (with `rpc_server.ts` running):
 *
 * ```sh
 * deno run -A rpc_client.ts 30          # [x] Requesting fib(30)  [.] Got 832040
 * deno run -A rpc_client.ts 10 20 30    # three calls at once, one callback queue
 * deno run -A rpc_client.ts --timeout 5000 --url amqp://localhost --queue rpc_queue 30
 * ```
 *
 * Permissions: `--allow-net` (the broker) and `--allow-env` (`AMQP_URL`, read
 * by amqplib's Node compatibility layer too); `-A` grants both.
 *
 * How the file maps to the tutorial's steps:
 *
 * 1. "We establish a connection, channel and declare an exclusive 'callback'
 *    queue for replies": {@linkcode FibonacciRpcClient.connect} → `openChannel`.
 *    By default the callback queue is RabbitMQ's direct reply-to pseudo-queue
 *    (`amq.rabbitmq.reply-to`), which needs no declaration and is faster; the
 *    tutorial's exclusive server-named queue is `replyQueue: "exclusive"`.
 * 2. "We subscribe to the 'callback' queue, so that we can receive RPC
 *    responses": `channel.consume(callbackQueue, …, { noAck: true })`.
 * 3. "The 'on_response' callback … checks if the correlation_id is the one
 *    we're looking for": `onReply`, which looks the id up in `pending` and
 *    drops (and counts) replies nobody waits for.
 * 4. "We publish the request message, with two properties: reply_to and
 *    correlation_id": {@linkcode FibonacciRpcClient.call}.
 *
 * What the tutorial leaves open, answered here: every call has a deadline
 * (and the request expires with it, so nobody computes an answer nobody
 * waits for); an `AbortSignal` cancels a call; a request to a queue that does
 * not exist fails at once (`mandatory` publish); a server's error reply
 * becomes an {@linkcode RpcError}; a lost connection fails the calls in
 * flight at once and recovers for the next ones.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import amqp from "npm:amqplib@^2.3.1";
import type { Channel, ChannelModel, Message, RecoveringChannelModel } from "npm:amqplib@^2.3.1";

/** The per-call deadline when neither the client nor the call sets one, in ms. */
export const DEFAULT_TIMEOUT_MS = 30_000;

/** RabbitMQ's direct reply-to pseudo-queue: replies go straight to this channel. */
const DIRECT_REPLY_TO = "amq.rabbitmq.reply-to";

/** Options for {@linkcode FibonacciRpcClient.connect}. Every field has a default. */
export interface ClientOptions {
  /** Broker URL. Default: `$AMQP_URL`, else `amqp://localhost`. */
  url?: string;
  /** The server's request queue. Default: `"rpc_queue"`. */
  queue?: string;
  /** Deadline of each call in ms, unless the call sets its own. Default: {@linkcode DEFAULT_TIMEOUT_MS}. */
  timeout?: number;
  /**
   * Where replies come back. `"direct"` (default): RabbitMQ's direct reply-to,
   * no queue to declare. `"exclusive"`: the tutorial's exclusive server-named
   * queue, declared per connection.
   */
  replyQueue?: "direct" | "exclusive";
  /**
   * Called with a line for every request sent and reply received, showing
   * how replies are matched to calls by correlation id. Default: none.
   */
  trace?: (line: string) => void;
}

/** Options for one {@linkcode FibonacciRpcClient.call}. */
export interface CallOptions {
  /** Deadline in ms. Default: the client's `timeout`. */
  timeout?: number;
  /** Aborting it rejects the call with the signal's reason. */
  signal?: AbortSignal;
}

/** Why an {@linkcode RpcError} was raised. */
export type RpcErrorCode =
  | "remote" // the server answered with an error reply
  | "timeout" // no reply before the deadline
  | "no-route" // the request queue does not exist
  | "connection-lost" // the broker connection dropped, or is reconnecting
  | "closed" // the client was closed
  | "bad-reply"; // the reply was not a decimal integer

/** A failed call. `code` says why; for `"remote"`, `message` is the server's. */
export class RpcError extends Error {
  override name = "RpcError";
  /** Why the call failed. */
  readonly code: RpcErrorCode;
  constructor(code: RpcErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

/** A call waiting for its reply, keyed by correlation id in `pending`. */
interface PendingCall {
  n: number;
  resolve(value: bigint): void;
  reject(error: unknown): void;
  timer: ReturnType<typeof setTimeout>;
  signal?: AbortSignal;
  onAbort?: () => void;
}

/** The URL with its password replaced by `***`, fit for logs and errors. */
function redact(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "***";
    return parsed.href;
  } catch {
    return "(invalid URL)";
  }
}

/** Throws a one-line TypeError unless `url` is an amqp:// or amqps:// URL with a host. */
function checkUrl(url: string, what: string): void {
  let parsed: URL | undefined;
  try {
    parsed = new URL(url);
  } catch {
    // reported below
  }
  if (!parsed || !/^amqps?:$/.test(parsed.protocol) || !parsed.hostname) {
    throw new TypeError(
      `${what} must be an amqp:// or amqps:// URL with a host, got "${redact(url)}"`,
    );
  }
}

/** One line saying why talking to the broker failed, without secrets. */
function describeFailure(error: unknown, url: string): string {
  const message = error instanceof Error ? error.message : String(error);
  const code = (error as { code?: unknown })?.code;
  if (code === "ECONNREFUSED") {
    return `cannot connect to ${redact(url)}: connection refused (is RabbitMQ running?)`;
  }
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") {
    return `cannot connect to ${redact(url)}: unknown host`;
  }
  if (/ACCESS[-_]REFUSED/.test(message)) {
    return `cannot log in to ${redact(url)}: access refused (wrong user name or password?)`;
  }
  if (message.startsWith("Expected ConnectionOpenOk; got <ConnectionClose")) {
    const vhost = decodeURIComponent(new URL(url).pathname.slice(1)) || "/";
    return `cannot open virtual host "${vhost}" on ${
      redact(url)
    } (does it exist? rabbitmqctl list_vhosts)`;
  }
  // amqplib's own messages name the broker's reply code; they never hold the URL.
  return message.split("\n")[0];
}

/**
 * A client for the Fibonacci RPC server: one connection, one channel, one
 * callback queue, any number of concurrent calls.
 *
 * @example
 * ```ts
 * await using client = await FibonacciRpcClient.connect({ queue: "rpc_queue" });
 * console.log(await client.call(30)); // 832040n
 * ```
 */
export class FibonacciRpcClient implements AsyncDisposable {
  readonly #connection: RecoveringChannelModel;
  readonly #queue: string;
  readonly #timeout: number;
  readonly #connectionName: string;
  /** Calls waiting for a reply, by correlation id. */
  readonly #pending = new Map<string, PendingCall>();
  /** The channel of the current connection; undefined while reconnecting. */
  #channel: Channel | undefined;
  #callbackQueue = "";
  #droppedReplies = 0;
  #closed = false;
  readonly #trace: ((line: string) => void) | undefined;

  private constructor(
    connection: RecoveringChannelModel,
    connectionName: string,
    queue: string,
    timeout: number,
    trace: ((line: string) => void) | undefined,
  ) {
    this.#trace = trace;
    this.#connection = connection;
    this.#connectionName = connectionName;
    this.#queue = queue;
    this.#timeout = timeout;
  }

  /**
   * Connects and sets up the callback queue. Fails at once, with a one-line
   * message, if the broker cannot be reached; once connected, a dropped
   * connection is recovered by itself (calls in flight then fail).
   */
  static async connect(options: ClientOptions = {}): Promise<FibonacciRpcClient> {
    const url = options.url ?? Deno.env.get("AMQP_URL") ?? "amqp://localhost";
    checkUrl(url, "the broker URL");
    const timeout = options.timeout ?? DEFAULT_TIMEOUT_MS;
    const replyQueue = options.replyQueue ?? "direct";
    checkTimeout(timeout);
    const connectionName = `rpc_client ${crypto.randomUUID().slice(0, 8)}`;
    const connection: RecoveringChannelModel = await amqp.connect(url, {
      noDelay: true, // with Nagle's algorithm on, every call waits ~40 ms
      timeout: 10_000, // a TCP connect that goes nowhere must not hang us
      clientProperties: { connection_name: connectionName },
      recovery: {
        waitForConnect: false, // so that `client` exists before setup runs
        initialMaxRetries: 0, // fail fast at start-up: a wrong URL is not a blip
        maxDelay: 5_000,
        setup: (model: ChannelModel): Promise<void> => client.#openChannel(model, replyQueue),
      },
    });
    const client: FibonacciRpcClient = new FibonacciRpcClient(
      connection,
      connectionName,
      options.queue ?? "rpc_queue",
      timeout,
      options.trace,
    );
    await connection.waitForConnect().catch((error: unknown) => {
      throw new Error(describeFailure(error, url));
    });
    return client;
  }

  /** Runs after every (re)connection: tutorial steps 1 and 2. */
  async #openChannel(model: ChannelModel, replyQueue: "direct" | "exclusive"): Promise<void> {
    const channel = await model.createChannel();
    channel.on("error", () => {}); // "close" below handles it
    channel.on("return", (message: Message) => this.#onReturn(message));
    const callbackQueue = replyQueue === "direct"
      ? DIRECT_REPLY_TO
      : (await channel.assertQueue("", { exclusive: true })).queue;
    // Replies are not acked (noAck): a lost reply is a call that times out.
    await channel.consume(callbackQueue, (message) => message && this.#onReply(message), {
      noAck: true,
    });
    channel.on("close", () => {
      if (this.#channel !== channel) return;
      this.#channel = undefined;
      this.#failAll("connection-lost", "lost the connection to the broker");
      // A channel closed under a live connection: let recovery rebuild both.
      if (!this.#closed) model.close().catch(() => {});
    });
    this.#callbackQueue = callbackQueue;
    this.#channel = channel;
  }

  /** Tutorial step 3: the reply is ours only if its correlation id is pending. */
  #onReply(message: Message): void {
    const { correlationId, type } = message.properties;
    const call = this.#pending.get(correlationId);
    if (!call) {
      // A duplicate (the server died between reply and ack, and the request
      // was redelivered), or a reply that came after its call timed out.
      this.#droppedReplies++;
      this.#trace?.(` [<] reply ${short(correlationId)}: no call waits for it, dropped`);
      return;
    }
    this.#trace?.(` [<] reply ${short(correlationId)}: matches fib(${call.n})`);
    const body = message.content.toString("utf8");
    if (type === "error") {
      this.#settle(correlationId, new RpcError("remote", body));
    } else if (/^\d+$/.test(body.trim())) {
      this.#settle(correlationId, BigInt(body.trim()));
    } else {
      this.#settle(
        correlationId,
        new RpcError(
          "bad-reply",
          `fib(${call.n}): the server replied ${JSON.stringify(body.slice(0, 80))}`,
        ),
      );
    }
  }

  /** A `mandatory` request came back: no queue by that name exists. */
  #onReturn(message: Message): void {
    const { correlationId } = message.properties;
    if (!this.#pending.has(correlationId)) return;
    this.#settle(
      correlationId,
      new RpcError("no-route", `no queue named "${this.#queue}": is the server running?`),
    );
  }

  /**
   * Ends one pending call: removes it, stops its timer, and resolves it with
   * a bigint or rejects it with anything else (an error, an abort reason).
   */
  #settle(correlationId: string, outcome: unknown): void {
    const call = this.#pending.get(correlationId);
    if (!call) return;
    this.#pending.delete(correlationId);
    clearTimeout(call.timer);
    if (call.onAbort) call.signal!.removeEventListener("abort", call.onAbort);
    if (typeof outcome === "bigint") call.resolve(outcome);
    else call.reject(outcome);
  }

  #failAll(code: RpcErrorCode, reason: string): void {
    for (const [correlationId, call] of this.#pending) {
      this.#settle(correlationId, new RpcError(code, `fib(${call.n}): ${reason}`));
    }
  }

  /**
   * Calls fib(n) on a server: tutorial step 4.
   *
   * @example
   * ```ts
   * const result = await client.call(30, { timeout: 5_000 }); // 832040n
   * ```
   * @throws {RangeError} unless n is a non-negative safe integer.
   * @throws {RpcError} with `code` saying why the call failed; an aborted
   *   call rejects with the signal's reason instead.
   */
  call(n: number, options: CallOptions = {}): Promise<bigint> {
    if (!Number.isSafeInteger(n) || n < 0) {
      return Promise.reject(new RangeError(`n must be a non-negative integer, got ${n}`));
    }
    const timeout = options.timeout ?? this.#timeout;
    const { signal } = options;
    try {
      checkTimeout(timeout);
      signal?.throwIfAborted();
    } catch (error) {
      return Promise.reject(error);
    }
    const channel = this.#channel;
    if (this.#closed) {
      return Promise.reject(new RpcError("closed", `fib(${n}): the client is closed`));
    }
    if (!channel) {
      return Promise.reject(
        new RpcError("connection-lost", `fib(${n}): not connected to the broker (reconnecting)`),
      );
    }
    const correlationId = crypto.randomUUID();
    return new Promise<bigint>((resolve, reject) => {
      // A timer we can clear, not AbortSignal.timeout: that one cannot be
      // cancelled, so 100k quick calls would keep 100k timers alive.
      const timer = setTimeout(
        () =>
          this.#settle(
            correlationId,
            new RpcError("timeout", `fib(${n}): no reply within ${timeout} ms`),
          ),
        timeout,
      );
      const call: PendingCall = { n, resolve, reject, timer, signal };
      if (signal) {
        call.onAbort = () => this.#settle(correlationId, signal.reason);
        signal.addEventListener("abort", call.onAbort, { once: true });
      }
      // Registered before publishing, so no reply can outrun its call.
      this.#pending.set(correlationId, call);
      this.#trace?.(
        ` [>] fib(${n}) sent, correlation_id ${
          short(correlationId)
        }, reply_to ${this.#callbackQueue}`,
      );
      try {
        channel.sendToQueue(this.#queue, Buffer.from(String(n)), {
          correlationId,
          replyTo: this.#callbackQueue,
          mandatory: true, // come back (basic.return) if no queue takes it
          expiration: String(timeout), // nobody computes what nobody awaits
        });
      } catch (error) {
        this.#settle(
          correlationId,
          new RpcError("connection-lost", `fib(${n}): ${(error as Error).message}`),
        );
      }
    });
  }

  /** Replies that matched no pending call: duplicates, late or stray replies. */
  get droppedReplies(): number {
    return this.#droppedReplies;
  }

  /** The `connection_name` it shows the broker (`rabbitmqctl list_connections`). */
  get connectionName(): string {
    return this.#connectionName;
  }

  /** The queue name the requests carry as `reply_to`. */
  get callbackQueue(): string {
    return this.#callbackQueue;
  }

  /** Calls waiting for their reply. */
  get pendingCalls(): number {
    return this.#pending.size;
  }

  /**
   * How many servers consume the request queue now; `undefined` if the queue
   * does not exist. Uses a channel of its own, since a missing queue closes it.
   */
  async consumerCount(): Promise<number | undefined> {
    const channel = await this.#connection.createChannel();
    channel.on("error", () => {});
    try {
      return (await channel.checkQueue(this.#queue)).consumerCount;
    } catch (error) {
      if ((error as { code?: number }).code === 404) return undefined;
      throw error;
    } finally {
      await channel.close().catch(() => {});
    }
  }

  /** Fails the calls in flight with code `"closed"` and closes the connection. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#failAll("closed", "the client was closed");
    this.#channel = undefined;
    await this.#connection.close().catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** The first 8 characters of a correlation id: enough to tell calls apart in a trace. */
function short(correlationId: unknown): string {
  return typeof correlationId === "string" ? correlationId.slice(0, 8) : "(none)";
}

function checkTimeout(timeout: number): void {
  if (!Number.isSafeInteger(timeout) || timeout < 1) {
    throw new RangeError(`timeout must be a positive whole number of ms, got ${timeout}`);
  }
}

const USAGE = `Usage: deno run -A rpc_client.ts [options] N [N ...]

Asks an RPC server for fib(N); several N are sent at once over one callback queue.

Options:
  --url URL        broker URL (default: $AMQP_URL, else amqp://localhost)
  --queue NAME     the server's request queue (default: rpc_queue)
  --timeout MS     deadline of each call in ms (default: ${DEFAULT_TIMEOUT_MS})
  --reply-queue Q  "direct" (RabbitMQ direct reply-to, default) or "exclusive"
  --verbose        show each request and how each reply is matched to it
  -h, --help       show this help`;

/** Parses the command line; throws a one-line message on bad input. */
function parseCommandLine(args: string[]) {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      url: { type: "string" },
      queue: { type: "string" },
      timeout: { type: "string" },
      "reply-queue": { type: "string" },
      verbose: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return { help: true as const };
  if (positionals.length === 0) throw new Error("give at least one number, e.g. rpc_client.ts 30");
  const numbers = positionals.map((text) => {
    if (!/^\d+$/.test(text)) throw new Error(`n must be a non-negative integer, got "${text}"`);
    if (!Number.isSafeInteger(Number(text))) {
      throw new Error(`n is too large: "${text}" (at most ${Number.MAX_SAFE_INTEGER})`);
    }
    return Number(text);
  });
  const timeout = values.timeout === undefined ? DEFAULT_TIMEOUT_MS : Number(values.timeout);
  if (!/^\d+$/.test(values.timeout ?? "1") || !Number.isSafeInteger(timeout) || timeout < 1) {
    throw new Error(`--timeout must be a positive whole number of ms, got "${values.timeout}"`);
  }
  const replyQueue = values["reply-queue"] ?? "direct";
  if (replyQueue !== "direct" && replyQueue !== "exclusive") {
    throw new Error(`--reply-queue must be "direct" or "exclusive", got "${replyQueue}"`);
  }
  if (values.queue === "") throw new Error("--queue must not be empty");
  const environmentUrl = Deno.env.get("AMQP_URL");
  if (values.url !== undefined) checkUrl(values.url, "--url");
  else if (environmentUrl !== undefined) checkUrl(environmentUrl, "AMQP_URL");
  return {
    help: false as const,
    numbers,
    timeout,
    replyQueue: replyQueue as "direct" | "exclusive",
    url: values.url,
    trace: values.verbose ? (line: string) => console.error(line) : undefined,
    queue: values.queue,
  };
}

if (import.meta.main) {
  let options;
  try {
    options = parseCommandLine(Deno.args);
  } catch (error) {
    console.error(`rpc_client: ${(error as Error).message} (see --help)`);
    Deno.exit(2);
  }
  if (options.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  let client: FibonacciRpcClient;
  try {
    client = await FibonacciRpcClient.connect(options);
  } catch (error) {
    console.error(`rpc_client: ${(error as Error).message}`);
    Deno.exit(1);
  }
  let interrupted = false;
  Deno.addSignalListener("SIGINT", () => {
    console.error("rpc_client: interrupted; closing the connection");
    interrupted = true;
    client.close(); // fails the calls in flight, which ends the wait below
  });
  const calls = options.numbers.map((n) => {
    console.log(` [x] Requesting fib(${n})`);
    return client.call(n);
  });
  // Without a server the requests would just sit in the queue: say so now,
  // rather than after the timeout. (A missing queue fails the calls at once.)
  client.consumerCount().then((count) => {
    if (count === 0 && client.pendingCalls > 0) {
      console.error(
        ` [!] No server is consuming "${options.queue ?? "rpc_queue"}"; ` +
          `waiting up to ${options.timeout} ms for one (start it: deno run -A rpc_server.ts)`,
      );
    }
  }, () => {});
  const outcomes = await Promise.allSettled(calls);
  if (interrupted) {
    await client.close();
    Deno.exit(130);
  }
  let failed = false;
  for (const [i, outcome] of outcomes.entries()) {
    if (outcome.status === "fulfilled") {
      console.log(` [.] Got ${outcome.value}`);
    } else {
      failed = true;
      const error = outcome.reason as Error;
      const prefix = error instanceof RpcError && error.code === "remote"
        ? `fib(${options.numbers[i]}): the server answered: `
        : "";
      console.error(`rpc_client: ${prefix}${error.message}`);
    }
  }
  await client.close();
  Deno.exit(failed ? 1 : 0);
}
