/**
 * # rpc_server.ts: the server half of RabbitMQ tutorial six ("RPC"), for Deno
 *
 * Consumes `n` from the queue `rpc_queue`, computes fib(n) and publishes the
 * answer to the queue named in the request's `reply_to`, with the request's
 * `correlation_id`, then acknowledges the request.
 *
 * Run it:
 *
 * ```sh
 * deno run -A rpc_server.ts                  # or: deno task server
 * deno run -A rpc_server.ts --prefetch 1 --queue rpc_queue --url amqp://localhost
 * ```
 *
 * Permissions: `--allow-net` (the broker) and `--allow-env` (`AMQP_URL`, read
 * by amqplib's Node compatibility layer too); `-A` grants both.
 *
 * How the file maps to the tutorial's steps:
 *
 * 1. "Establish the connection, channel and declare the queue":
 *    {@linkcode startServer} → `openChannel` and `declareRequestQueue`.
 * 2. "We might want to run more than one server process. In order to spread
 *    the load equally over multiple servers we need to set the prefetch
 *    setting on channel": `channel.prefetch` in `openChannel`.
 * 3. "Our Fibonacci function": {@linkcode fib}, iterative and exact (BigInt).
 * 4. "We declare a callback for basic_consume, the core of the RPC server. It's
 *    executed when the request is received. It does the work and sends the
 *    response back": `answer`, which replies to `reply_to` with the same
 *    `correlation_id` and only then acks.
 *
 * What the tutorial leaves open, answered here: bad requests get an error
 * reply (the `type` property is `"error"`, the body is the message, so plain
 * tutorial clients still see a body and their correlation id) and are acked,
 * never requeued; the connection recovers by itself (amqplib's recovery); a
 * queue declared with other settings is used as it is; SIGINT/SIGTERM drain
 * the requests in progress before exiting.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import amqp from "npm:amqplib@^2.3.1";
import type { Channel, ChannelModel, ConsumeMessage } from "npm:amqplib@^2.3.1";

/** The largest n the server computes; fib(10000) has 2,090 decimal digits. */
export const MAX_N = 10_000;

/** Request bodies longer than this are refused without being read. */
export const MAX_REQUEST_BYTES = 64;

/**
 * Requests the broker hands to one server before it has acked any: the
 * `prefetch` default. The tutorial uses 1, which is fair for slow work but
 * leaves the server idle for a round trip after every reply (about 5x fewer
 * calls/s here). With fib, whose worst case is about 1 ms, a server holding
 * 50 requests delays no one much; see README, "Choosing prefetch", for the
 * measurements, and use 1 for slow handlers.
 */
export const DEFAULT_PREFETCH = 50;

/** Options for {@linkcode startServer}. Every field has a default. */
export interface ServerOptions {
  /** Broker URL. Default: `$AMQP_URL`, else `amqp://localhost`. */
  url?: string;
  /** The request queue. Default: `"rpc_queue"`, as in the tutorial. */
  queue?: string;
  /** Unacked requests the broker sends at once. Default: {@linkcode DEFAULT_PREFETCH}. */
  prefetch?: number;
  /**
   * How to declare the queue if it does not exist. `"quorum"` (default), as
   * the current tutorials do: replicated and durable. `"classic"`: a
   * non-durable classic queue, declared exactly as the tutorial programs in
   * other languages declare it (so theirs and ours can share it), with about
   * half the latency per call (README, "Benchmark"). An existing queue is
   * used as it is either way.
   */
  queueType?: "quorum" | "classic";
  /**
   * Computes the answer for a valid `n` (0 to {@linkcode MAX_N}). Default:
   * {@linkcode fib}. It may be async; if it throws, the caller gets an error
   * reply carrying the message.
   */
  handler?: (n: number) => bigint | Promise<bigint>;
  /** Where log lines go. Default: `console.log`; `null` silences them. */
  log?: ((line: string) => void) | null;
}

/** A running server, from {@linkcode startServer}. */
export interface RpcServer extends AsyncDisposable {
  /** The queue it consumes. */
  readonly queue: string;
  /** Requests answered so far: results and error replies. */
  readonly answered: number;
  /** The `connection_name` it shows the broker (`rabbitmqctl list_connections`). */
  readonly connectionName: string;
  /**
   * Stops taking requests, finishes and acks the ones in progress, then
   * closes the channel and the connection. Safe to call more than once.
   */
  close(): Promise<void>;
}

/**
 * The n-th Fibonacci number, exactly: fib(0) = 0, fib(1) = 1.
 *
 * The tutorial's recursive version takes exponential time and overflows
 * floating point past fib(78); this loop is linear and exact.
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
  for (let i = 0; i < n; i++) {
    const next = previous + current;
    previous = current;
    current = next;
  }
  return previous;
}

/** A request the server refuses; its message goes back to the caller. */
class BadRequest extends Error {}

/** Reads `n` from a request body: ASCII digits, surrounding white space allowed. */
function parseRequest(body: Buffer): number {
  const expected = `n must be a decimal integer from 0 to ${MAX_N}`;
  if (body.length === 0) throw new BadRequest(`empty request: ${expected}`);
  if (body.length > MAX_REQUEST_BYTES) {
    throw new BadRequest(
      `request too large: ${body.length} bytes, at most ${MAX_REQUEST_BYTES}`,
    );
  }
  const text = body.toString("utf8").trim();
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(n <= MAX_N)) throw new BadRequest(`${expected}, got ${JSON.stringify(text)}`);
  return n;
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
 * Starts an RPC server: connects, declares the queue, sets prefetch and
 * consumes. The connection recovers by itself if the broker drops it;
 * start-up fails at once (with a one-line message) if the broker is away.
 *
 * @example
 * ```ts
 * await using server = await startServer({ queue: "rpc_queue", prefetch: 50 });
 * ```
 */
export async function startServer(options: ServerOptions = {}): Promise<RpcServer> {
  const url = options.url ?? Deno.env.get("AMQP_URL") ?? "amqp://localhost";
  checkUrl(url, "the broker URL");
  const queue = options.queue ?? "rpc_queue";
  const prefetch = options.prefetch ?? DEFAULT_PREFETCH;
  const queueType = options.queueType ?? "quorum";
  const handler = options.handler ?? fib;
  const log = options.log === undefined ? console.log : options.log ?? (() => {});
  const connectionName = `rpc_server ${queue} ${crypto.randomUUID().slice(0, 8)}`;
  if (!Number.isInteger(prefetch) || prefetch < 1 || prefetch > 65535) {
    throw new RangeError(`prefetch must be an integer from 1 to 65535, got ${prefetch}`);
  }

  let answered = 0;
  let stopping = false;
  /** The channel and consumer of the current connection, once set up. */
  let consumer: { channel: Channel; consumerTag: string } | undefined;
  /** Requests an async handler is still working on; close() waits for them. */
  const inProgress = new Set<Promise<void>>();

  /** Declares the queue as the current tutorials do, or takes it as it is. */
  async function declareRequestQueue(model: ChannelModel, channel: Channel): Promise<Channel> {
    try {
      await channel.assertQueue(
        queue,
        queueType === "quorum"
          ? { durable: true, arguments: { "x-queue-type": "quorum" } }
          : { durable: false },
      );
      return channel;
    } catch (error) {
      if ((error as { code?: number }).code !== 406) throw error;
    }
    // 406 PRECONDITION_FAILED: the queue exists with other settings (say, a
    // classic queue from another tutorial's server). It still delivers
    // requests, so use it; the 406 closed that channel, so take a new one.
    const fresh = await model.createChannel();
    fresh.on("error", () => {});
    await fresh.checkQueue(queue);
    log(
      ` [!] Queue "${queue}" exists with other settings; using it as it is ` +
        `(for a ${queueType} queue: rabbitmqctl delete_queue ${queue})`,
    );
    return fresh;
  }

  /** Runs after every (re)connection, as amqplib's recovery `setup`. */
  async function openChannel(model: ChannelModel): Promise<void> {
    let channel = await model.createChannel();
    // Without an "error" listener a channel error would throw out of amqplib.
    channel.on("error", () => {});
    channel = await declareRequestQueue(model, channel);
    await channel.prefetch(prefetch);
    const ready = channel;
    const { consumerTag } = await channel.consume(queue, (message) => {
      if (message === null) {
        // The broker cancelled us (the queue was deleted): reconnecting
        // re-declares the queue and consumes again.
        log(` [!] The broker cancelled the consumer of "${queue}"; reconnecting`);
        model.close().catch(() => {});
        return;
      }
      const working = answer(ready, message);
      if (working) {
        inProgress.add(working);
        working.finally(() => inProgress.delete(working));
      }
    });
    consumer = { channel, consumerTag };
    // A channel the broker closes under a live connection would leave us
    // deaf; closing the connection hands the repair to amqplib's recovery.
    channel.on("close", () => {
      if (consumer?.channel === channel) consumer = undefined;
      if (!stopping) model.close().catch(() => {});
    });
  }

  /**
   * Does the work and sends the response back, then acks: tutorial step 4.
   * A synchronous handler (like fib) answers at once; an async one returns
   * the promise that close() waits for.
   */
  function answer(channel: Channel, message: ConsumeMessage): Promise<void> | undefined {
    let result: unknown;
    try {
      const { replyTo, correlationId } = message.properties;
      if (!replyTo) throw new BadRequest("request has no reply_to");
      if (!correlationId) throw new BadRequest("request has no correlation_id");
      const n = parseRequest(message.content);
      log(` [.] fib(${n})${message.fields.redelivered ? " (redelivered)" : ""}`);
      result = handler(n);
    } catch (error) {
      reply(channel, message, error, true);
      return;
    }
    if (!(result instanceof Promise)) {
      reply(channel, message, result, false);
      return;
    }
    return result.then(
      (value) => reply(channel, message, value, false),
      (error) => reply(channel, message, error, true),
    );
  }

  /** Publishes the result, or the error's message, to `reply_to`; then acks. */
  function reply(
    channel: Channel,
    message: ConsumeMessage,
    outcome: unknown,
    failed: boolean,
  ): void {
    const { replyTo, correlationId } = message.properties;
    const body = failed && outcome instanceof Error ? outcome.message : String(outcome);
    if (failed) {
      log(` [!] ${outcome instanceof BadRequest ? "Bad request" : "Handler failed"}: ${body}`);
    }
    try {
      // Nobody to answer: ack, so the request is not redelivered forever.
      if (replyTo) {
        channel.sendToQueue(replyTo, Buffer.from(body), {
          correlationId,
          ...(failed ? { type: "error" } : {}),
        });
        answered++;
      }
      channel.ack(message);
    } catch {
      // The channel is gone; the broker requeues the unacked request.
      log(` [!] Lost the channel before acking; the broker will redeliver the request`);
    }
  }

  const connection = await amqp.connect(url, {
    noDelay: true, // with Nagle's algorithm on, every reply waits ~40 ms
    clientProperties: { connection_name: connectionName },
    recovery: {
      initialMaxRetries: 0, // fail fast at start-up: a wrong URL is not a blip
      maxDelay: 5_000,
      setup: openChannel,
    },
  }).catch((error: unknown) => {
    throw new Error(describeFailure(error, url));
  });
  connection.on("error", () => {}); // "disconnect" below says what happened
  connection.on("disconnect", (error: Error) => {
    consumer = undefined;
    if (!stopping) log(` [!] Lost the broker (${describeFailure(error, url)}); reconnecting`);
  });
  connection.on("reconnect-scheduled", ({ attempt, delay }: { attempt: number; delay: number }) => {
    if (!stopping && attempt > 1) log(` [!] Still no broker; trying again in ${delay} ms`);
  });
  connection.on("connect", () => {
    if (!stopping) log(` [x] Reconnected; awaiting RPC requests on "${queue}"`);
  });
  // The first "connect" fired before we listened; only reconnections log.

  let closing: Promise<void> | undefined;
  function close(): Promise<void> {
    closing ??= (async () => {
      stopping = true;
      if (consumer) {
        // Stop taking new requests; what was already delivered is finished.
        await consumer.channel.cancel(consumer.consumerTag).catch(() => {});
      }
      while (inProgress.size > 0) await Promise.allSettled([...inProgress]);
      // Close the channel first: its close-ok comes after the broker has taken
      // every reply and ack sent before it. amqplib may write a connection
      // close ahead of frames still queued on a channel, losing them.
      await consumer?.channel.close().catch(() => {});
      await connection.close().catch(() => {});
    })();
    return closing;
  }

  return {
    queue,
    connectionName,
    get answered() {
      return answered;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

const USAGE = `Usage: deno run -A rpc_server.ts [options]

Consumes requests from a RabbitMQ queue and answers each with fib(n).

Options:
  --url URL        broker URL (default: $AMQP_URL, else amqp://localhost)
  --queue NAME     request queue (default: rpc_queue)
  --prefetch N     unacked requests at once, 1 to 65535 (default: ${DEFAULT_PREFETCH})
  --queue-type T   "quorum" (default), or "classic" as the other languages'
                   tutorials declare it: how to declare a new queue
  --quiet          do not log each request
  -h, --help       show this help`;

/** Parses the command line; throws a one-line message on bad input. */
function parseCommandLine(args: string[]) {
  const { values } = parseArgs({
    args,
    options: {
      url: { type: "string" },
      queue: { type: "string" },
      prefetch: { type: "string" },
      "queue-type": { type: "string" },
      quiet: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  const prefetch = values.prefetch === undefined ? DEFAULT_PREFETCH : Number(values.prefetch);
  if (!/^\d+$/.test(values.prefetch ?? "1") || prefetch < 1 || prefetch > 65535) {
    throw new Error(`--prefetch must be an integer from 1 to 65535, got "${values.prefetch}"`);
  }
  if (values.queue === "") throw new Error("--queue must not be empty");
  const queueType = values["queue-type"] ?? "quorum";
  if (queueType !== "quorum" && queueType !== "classic") {
    throw new Error(`--queue-type must be "quorum" or "classic", got "${queueType}"`);
  }
  const environmentUrl = Deno.env.get("AMQP_URL");
  if (values.url !== undefined) checkUrl(values.url, "--url");
  else if (environmentUrl !== undefined) checkUrl(environmentUrl, "AMQP_URL");
  return { ...values, prefetch, queueType: queueType as "quorum" | "classic" };
}

if (import.meta.main) {
  let options;
  try {
    options = parseCommandLine(Deno.args);
  } catch (error) {
    console.error(`rpc_server: ${(error as Error).message} (see --help)`);
    Deno.exit(2);
  }
  if (options.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  let server: RpcServer;
  try {
    server = await startServer({
      url: options.url,
      queue: options.queue,
      prefetch: options.prefetch,
      queueType: options.queueType,
      log: options.quiet ? null : console.log,
    });
  } catch (error) {
    console.error(`rpc_server: ${(error as Error).message}`);
    Deno.exit(1);
  }
  console.log(" [x] Awaiting RPC requests");
  let signalled = false;
  const shutDown = async (signal: string) => {
    if (signalled) {
      // A second signal: do not wait. Unacked requests go back to the queue.
      console.log(` [!] ${signal} again: exiting now`);
      Deno.exit(1);
    }
    signalled = true;
    console.log(` [x] ${signal}: finishing the requests in progress, then exiting`);
    await server.close();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", () => shutDown("SIGINT"));
  Deno.addSignalListener("SIGTERM", () => shutDown("SIGTERM"));
}
