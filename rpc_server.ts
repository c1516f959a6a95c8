/**
 * # rpc_server.ts: the server of RabbitMQ tutorial six ("RPC"), for Deno
 *
 * Takes `n` from the queue `rpc_queue`, computes fib(n), sends the answer to
 * the queue the request names in `reply_to`, with the request's
 * `correlation_id`, and acknowledges the request.
 *
 * ```sh
 * deno run -A rpc_server.ts          # or: deno task server
 * deno run -A rpc_server.ts --help   # the options
 * ```
 *
 * Permissions: `--allow-net` (the broker) and `--allow-env` (`AMQP_URL`);
 * `deno task server` grants just those two, `-A` grants everything.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import amqp from "npm:amqplib@^2.3.1";
import type {
  Channel,
  ChannelModel,
  ConsumeMessage,
  RecoveringChannelModel,
} from "npm:amqplib@^2.3.1";

// ─── Part 1: the tutorial ──────────────────────────────────────────────────

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

/**
 * A running RPC server, from {@linkcode RpcServer.start}.
 *
 * @example
 * ```ts
 * await using server = await RpcServer.start({ queue: "rpc_queue" });
 * ```
 */
export class RpcServer implements AsyncDisposable {
  /** The queue it consumes. */
  readonly queue: string;
  /** The `connection_name` it shows the broker (`rabbitmqctl list_connections`). */
  readonly connectionName: string;

  /**
   * Step 1: connect, then declare the queue, set prefetch and consume. A
   * lost connection is rebuilt by itself; start-up fails at once, with a
   * one-line message, if no broker answers.
   */
  static async start(options: ServerOptions = {}): Promise<RpcServer> {
    const server = new RpcServer(options);
    await server.#openReplyConnection(); // Part 2: replies go out on a connection of their own
    const log = (line: string) => server.#log.write(line);
    try {
      server.#requests = await openConnection(
        server.#urls,
        server.connectionName,
        (model) => server.#consume(model),
        log,
      );
    } catch (error) {
      await server.#replies?.close().catch(ignoreError);
      throw error;
    }
    return server;
  }

  /**
   * Steps 2 to 5, run on every new connection: open a channel, declare the
   * queue, set prefetch, consume.
   */
  async #consume(model: ChannelModel): Promise<void> {
    let channel = await model.createChannel(); // Step 2: a channel
    channel = await this.#declareQueue(model, channel); // Step 3: declare rpc_queue
    // Step 4: fair dispatch. With several servers on the queue, the broker
    // hands each at most `prefetch` requests it has not acked yet.
    await channel.prefetch(this.#prefetch);
    this.#log.write(" [x] Awaiting RPC requests");
    // Step 5: consume, with acknowledgements (no `noAck`): a request a dead
    // server never acked goes to another server.
    const { consumerTag } = await channel.consume(
      this.queue,
      (message) => this.#onRequest(channel, message),
    );
    this.#consumer = { channel, consumerTag };
    this.#reconnectWhenClosed(model, channel);
  }

  /** Step 3: declare the queue, durable and quorum as today's tutorials do. */
  async #declareQueue(model: ChannelModel, channel: Channel): Promise<Channel> {
    channel.on("error", ignoreError); // its "close" event says it all
    try {
      await channel.assertQueue(
        this.queue,
        this.#queueType === "quorum"
          ? { durable: true, arguments: { "x-queue-type": "quorum" } }
          : { durable: false },
      );
      return channel;
    } catch (error) {
      return await this.#useExistingQueue(model, error);
    }
  }

  /** Requests arrive here, in order; async handlers take them one at a time (Part 2). */
  #onRequest(channel: Channel, message: ConsumeMessage | null): void {
    if (message === null) return this.#onCancelled(channel);
    if (this.#working) this.#backlog.push({ channel, message });
    else this.#compute(channel, message);
  }

  /** Step 6: compute the answer, fib(n). Bad requests get an error reply. */
  #compute(channel: Channel, message: ConsumeMessage): void {
    if (this.#callerGaveUp(message)) return this.#skip(channel, message);
    const address = replyAddress(message, this.#log);
    if (!address) return this.#ack(channel, message); // nobody we can answer
    let result: bigint | Promise<bigint>;
    try {
      const n = readRequest(message);
      const again = message.fields.redelivered ? " (redelivered)" : "";
      this.#log.write(() => ` [.] fib(${n})${again}`, "requests"); // built only if shown
      result = this.#handler(n);
    } catch (error) {
      return this.#reply(channel, message, address, error, true);
    }
    if (result instanceof Promise) this.#replyWhenDone(channel, message, address, result);
    else this.#reply(channel, message, address, result, false); // fib is synchronous
  }

  /**
   * Step 7: send the answer to `reply_to`, with the request's
   * `correlation_id`, so the caller can tell which call it answers. Step 8:
   * ack, only now: a server that dies before this leaves the request to
   * another server.
   */
  #reply(
    channel: Channel,
    message: ConsumeMessage,
    address: ReplyAddress,
    outcome: unknown,
    failed: boolean,
  ): void {
    const body = failed ? describeRefusal(outcome, this.#log) : String(outcome);
    const type = failed ? "error" : undefined; // Part 2: error replies
    const properties = { correlationId: address.correlationId, type };
    if (!this.#publishReply(address.replyTo, body, properties)) {
      return this.#replyWhenReconnected(channel, message, address.replyTo, body, properties);
    }
    this.#answered++;
    this.#ack(channel, message);
  }

  /** Requests answered so far: results and error replies. */
  get answered(): number {
    return this.#answered;
  }

  /** Requests acked without being computed, because their caller had given up. */
  get skipped(): number {
    return this.#skipped;
  }

  // ─── Part 2: what the tutorial leaves open ─────────────────────────────────
  // (the methods here; the functions they call follow the class)

  // The server's state, set from its options (ServerOptions, below).
  readonly #urls: readonly URL[];
  readonly #prefetch: number;
  readonly #queueType: "quorum" | "classic";
  readonly #handler: (n: number) => bigint | Promise<bigint>;
  readonly #skipLate: boolean;
  readonly #log: RateLimitedLog;
  /** The connection requests come in on, and the one replies go out on. */
  #requests?: RecoveringChannelModel;
  #replies?: RecoveringChannelModel;
  #consumer?: { channel: Channel; consumerTag: string };
  #replyChannel?: Channel;
  /** Resolves when the next reply channel opens. */
  #replyChannelBack = Promise.withResolvers<void>();
  /** Requests that came while an async handler worked on another. */
  readonly #backlog: { channel: Channel; message: ConsumeMessage }[] = [];
  #working = false;
  /** Async work that close() waits for. */
  readonly #inProgress = new Set<Promise<void>>();
  #answered = 0;
  #skipped = 0;
  #stopping = false;
  #closing?: Promise<void>;

  private constructor(options: ServerOptions) {
    const url = options.url ?? Deno.env.get("AMQP_URL") ?? "amqp://localhost";
    this.#urls = parseBrokerUrls(url, "the broker URL");
    this.queue = options.queue ?? "rpc_queue";
    this.#prefetch = options.prefetch ?? DEFAULT_PREFETCH;
    if (!isPrefetch(this.#prefetch)) {
      throw new RangeError(`prefetch must be ${PREFETCH_RULE}, got ${this.#prefetch}`);
    }
    this.#queueType = options.queueType ?? "quorum";
    this.#handler = options.handler ?? fib;
    this.#skipLate = options.skipLate ?? true;
    this.#log = new RateLimitedLog(options.log === undefined ? console.log : options.log);
    this.connectionName = `rpc_server ${this.queue} ${crypto.randomUUID().slice(0, 8)}`;
  }

  /**
   * An existing queue with other settings: the declare fails with 406
   * PRECONDITION_FAILED (say, a classic `rpc_queue` left by an older copy of
   * the tutorial). It still delivers requests, so use it as it is; the 406
   * closed the channel, so take a new one.
   */
  async #useExistingQueue(model: ChannelModel, error: unknown): Promise<Channel> {
    if ((error as { code?: number }).code !== 406) throw error;
    const channel = await model.createChannel();
    channel.on("error", ignoreError);
    await channel.checkQueue(this.queue);
    this.#log.write(
      ` [!] Queue "${this.queue}" exists with other settings; using it as it is ` +
        `(to declare it ${this.#queueType}: rabbitmqctl delete_queue ${this.queue})`,
    );
    return channel;
  }

  /**
   * Reconnecting. A channel the broker closes under a live connection (the
   * queue deleted, an error) would leave us deaf: closing the connection
   * hands the repair to amqplib's recovery, which runs steps 2 to 5 again.
   */
  #reconnectWhenClosed(model: ChannelModel, channel: Channel): void {
    channel.on("close", () => {
      if (this.#consumer?.channel === channel) this.#consumer = undefined;
      if (this.#replyChannel === channel) this.#replyChannel = undefined;
      if (!this.#stopping) model.close().catch(ignoreError);
    });
  }

  /** The broker cancelled our consumer: the queue was deleted. Reconnecting declares it again. */
  #onCancelled(channel: Channel): void {
    this.#log.write(` [!] The broker cancelled the consumer of "${this.queue}"; reconnecting`);
    channel.close().catch(ignoreError);
  }

  /**
   * Work nobody waits for. Our client sends its deadline with each request;
   * a request taken after it (it sat in the queue or in this server's
   * backlog while the caller timed out) is acked and not computed, so an
   * overloaded server catches up instead of answering the void.
   */
  #callerGaveUp(message: ConsumeMessage): boolean {
    const deadline = message.properties.headers?.[DEADLINE_HEADER];
    return this.#skipLate && typeof deadline === "number" &&
      Date.now() > deadline + DEADLINE_GRACE_MS;
  }

  #skip(channel: Channel, message: ConsumeMessage): void {
    this.#skipped++;
    this.#log.write(" [.] Skipped a request whose caller gave up (deadline passed)", "skipped");
    this.#ack(channel, message);
  }

  /**
   * Replies go out on a connection of their own. A reply the broker cannot
   * deliver can close the connection that sent it: RabbitMQ 3.10 fails a
   * reply to a direct reply-to caller that lived on a cluster node that is
   * gone with 541 INTERNAL_ERROR. On the consuming connection that would
   * redeliver every unacked request, crash again, and loop; here it costs
   * only a reconnection of the reply connection.
   */
  async #openReplyConnection(): Promise<void> {
    this.#replies = await openConnection(
      this.#urls,
      `${this.connectionName} replies`,
      (model) => this.#openReplyChannel(model),
      (line) => this.#log.write(`${line} (reply connection)`),
    );
  }

  /** Runs on every new reply connection. */
  async #openReplyChannel(model: ChannelModel): Promise<void> {
    const channel = await model.createChannel();
    channel.on("error", ignoreError);
    this.#reconnectWhenClosed(model, channel);
    this.#replyChannel = channel;
    this.#replyChannelBack.resolve();
    this.#replyChannelBack = Promise.withResolvers();
  }

  /** Publishes one reply; false if the reply connection is being rebuilt. */
  #publishReply(replyTo: string, body: string, properties: ReplyProperties): boolean {
    if (!this.#replyChannel) return false;
    try {
      this.#replyChannel.sendToQueue(replyTo, Buffer.from(body), properties);
    } catch (error) {
      // Whatever this one request holds, it must not stall the others.
      this.#log.write(` [!] Could not reply to "${replyTo}": ${(error as Error).message}`);
    }
    return true;
  }

  /** The reply connection is being rebuilt: the request waits for it, unacked. */
  #replyWhenReconnected(
    channel: Channel,
    message: ConsumeMessage,
    replyTo: string,
    body: string,
    properties: ReplyProperties,
  ): void {
    this.#track((async () => {
      // Waiting is enough: the check below sees whether the channel came back.
      await within(this.#replyChannelBack.promise, REPLY_WAIT_MS, "no reply channel").catch(
        ignoreError,
      );
      if (this.#publishReply(replyTo, body, properties)) {
        this.#answered++;
        this.#ack(channel, message);
        return;
      }
      // Still no reply connection: give the request back for another server.
      this.#log.write(" [!] No reply connection; returning the request to the queue");
      try {
        channel.nack(message, false, true);
      } catch (error) {
        ignoreError(error); // the channel is gone: the broker requeues the request anyway
      }
    })());
  }

  /**
   * One request at a time, as in the tutorial: while an async handler works,
   * later requests wait in this server's backlog (at most `prefetch` of
   * them), where a request whose caller gave up is still skipped. To do more
   * at once, run more servers.
   */
  #replyWhenDone(
    channel: Channel,
    message: ConsumeMessage,
    address: ReplyAddress,
    result: Promise<bigint>,
  ): void {
    this.#working = true;
    this.#track(
      result.then(
        (value) => this.#reply(channel, message, address, value, false),
        (error) => this.#reply(channel, message, address, error, true),
      ).finally(() => {
        this.#working = false;
        while (!this.#working && this.#backlog.length > 0) {
          const next = this.#backlog.shift()!;
          this.#compute(next.channel, next.message);
        }
      }),
    );
  }

  /** Acks, unless the channel is gone: then the broker gives the request to another server. */
  #ack(channel: Channel, message: ConsumeMessage): void {
    try {
      channel.ack(message);
    } catch {
      this.#log.write(" [!] Lost the channel before acking; the broker will redeliver the request");
    }
  }

  /** Work that close() waits for. */
  #track(work: Promise<void>): void {
    this.#inProgress.add(work);
    work.finally(() => this.#inProgress.delete(work));
  }

  /**
   * Shutting down: stops taking requests, finishes and acks the ones it has,
   * then closes the channels and the connections. Safe to call twice.
   */
  close(): Promise<void> {
    this.#closing ??= this.#shutDown();
    return this.#closing;
  }

  async #shutDown(): Promise<void> {
    this.#stopping = true;
    const consumer = this.#consumer;
    if (consumer) await consumer.channel.cancel(consumer.consumerTag).catch(ignoreError);
    while (this.#inProgress.size > 0) await Promise.allSettled([...this.#inProgress]);
    // Channels first: a channel's close-ok comes after the broker has taken
    // every frame sent on it, while amqplib may write a connection close
    // ahead of frames still queued on a channel, and lose them.
    await this.#replyChannel?.close().catch(ignoreError);
    await consumer?.channel.close().catch(ignoreError);
    await this.#requests?.close().catch(ignoreError);
    await this.#replies?.close().catch(ignoreError);
    this.#log.flush();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

// ─── Part 2, continued: the functions the server's methods call ────────────

/** The largest n the server computes; fib(10000) has 2,090 decimal digits. */
export const MAX_N = 10_000;

/**
 * Requests the broker hands one server before it has acked any: the
 * `prefetch` default. The tutorial uses 1, which is fairest for slow work
 * but leaves a server idle for a round trip after every reply (about 5x
 * fewer calls/s here). fib takes at most ~1 ms, so 50 held requests delay
 * nobody much; use 1 for slow handlers (bench/README.md has the figures).
 */
export const DEFAULT_PREFETCH = 50;

/** Options for {@linkcode RpcServer.start}. Every field has a default. */
export interface ServerOptions {
  /**
   * Broker URL, or several (the nodes of a cluster): the server uses the
   * first that answers and moves on to the next when it loses one.
   * Default: `$AMQP_URL` (commas between URLs), else `amqp://localhost`.
   */
  url?: string | string[];
  /** The request queue. Default: `"rpc_queue"`, as in the tutorial. */
  queue?: string;
  /** Requests the broker may hand over before the first is acked. Default: {@linkcode DEFAULT_PREFETCH}. */
  prefetch?: number;
  /**
   * How to declare the queue if it does not exist yet. `"quorum"` (default):
   * durable and replicated, as every official tutorial server declares it
   * since 2026-03-16. `"classic"`: non-durable classic, as older copies of
   * the tutorials and amqplib's bundled examples declare it. A queue that
   * exists already is used as it is either way.
   */
  queueType?: "quorum" | "classic";
  /**
   * Computes the answer for a valid `n` (0 to {@linkcode MAX_N}). Default:
   * {@linkcode fib}. It may be async; if it throws, the caller gets an error
   * reply carrying the message.
   */
  handler?: (n: number) => bigint | Promise<bigint>;
  /**
   * Skip requests whose caller has given up: a request whose deadline (the
   * `x-deadline` header our client sends) passed more than
   * {@linkcode DEADLINE_GRACE_MS} ago is acked without being computed.
   * Default: `true`. Requests without the header are always computed.
   */
  skipLate?: boolean;
  /** Where log lines go. Default: `console.log`; `null` silences them. */
  log?: ((line: string) => void) | null;
}

/**
 * Our client sends its deadline with each request, in this header: ms since
 * 1970 by the caller's clock. Other tutorial clients send none.
 */
const DEADLINE_HEADER = "x-deadline";

/**
 * How long past its caller's deadline a request is still computed, in ms.
 * The deadline is read on another machine's clock: this allows for clocks
 * up to a quarter of a second apart (NTP keeps them within milliseconds).
 * A server whose clock runs ahead by more skips requests its callers still
 * wait for; one that runs behind computes some that nobody reads.
 */
export const DEADLINE_GRACE_MS = 250;

/** How long a finished request waits for a lost reply connection to come back, in ms. */
const REPLY_WAIT_MS = 5_000;

/** Request bodies longer than this get an error reply. */
export const MAX_REQUEST_BYTES = 64;

/** At most this many log lines a second; beyond it, one summary line a second. */
const LOG_LINES_PER_SECOND = 20;

type ReplyProperties = { correlationId?: string; type?: string };
type ReplyAddress = { replyTo: string; correlationId?: string };

/** A request the server refuses; its message goes back to the caller. */
class BadRequest extends Error {}

/**
 * Bad requests. Reads `n` from a request body: ASCII digits, white space
 * around them allowed. Note that the body has been read whole by then
 * (amqplib buffers every message): what bounds a body's size is the
 * broker's `max_message_size`, not this check.
 */
function readRequest(message: ConsumeMessage): number {
  const body = message.content;
  if (!message.properties.correlationId) throw new BadRequest("request has no correlation_id");
  if (body.length > MAX_REQUEST_BYTES) {
    throw new BadRequest(`request too large: ${body.length} bytes, at most ${MAX_REQUEST_BYTES}`);
  }
  const n = asciiDecimal(body); // the common case, read straight from the bytes
  if (n !== undefined && n <= MAX_N) return n;
  const expected = `n must be a decimal integer from 0 to ${MAX_N}`;
  if (body.length === 0) throw new BadRequest(`empty request: ${expected}`);
  const text = body.toString("utf8").trim(); // white space beyond ASCII is allowed too
  const number = /^\d+$/.test(text) ? Number(text) : NaN;
  if (number <= MAX_N) return number;
  throw new BadRequest(`${expected}, got ${JSON.stringify(text)}`);
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

/**
 * Error replies: the error's message is the body and the `type` property
 * is `"error"`, so our client raises it while a plain tutorial client still
 * gets a body and its correlation id.
 */
function describeRefusal(error: unknown, log: RateLimitedLog): string {
  const text = error instanceof Error ? error.message : String(error);
  log.write(
    ` [!] ${error instanceof BadRequest ? "Bad request" : "Handler failed"}: ${text}`,
    "refused",
  );
  return text;
}

/**
 * Who to answer, if anyone. A request without `reply_to` has nobody to
 * answer. AMQP's `reply_to` and `correlation_id` are raw bytes, which
 * amqplib reads as UTF-8 text, replacing what is not (with U+FFFD): such a
 * reply would go to the wrong queue or carry an id its caller never sent,
 * so it is not sent. Either way the request is acked, with a log line.
 */
function replyAddress(message: ConsumeMessage, log: RateLimitedLog): ReplyAddress | undefined {
  const { replyTo, correlationId } = message.properties;
  if (!replyTo) {
    log.write(" [!] Dropped a request without reply_to: nobody to answer", "refused");
    return undefined;
  }
  if (replyTo.includes("\uFFFD") || correlationId?.includes("\uFFFD")) {
    log.write(
      " [!] Dropped a request whose reply_to or correlation_id is not UTF-8: " +
        "it cannot be echoed exactly",
      "refused",
    );
    return undefined;
  }
  return { replyTo, correlationId };
}

/** The prefetch counts AMQP allows (0, "no limit", is not one we take). */
const PREFETCH_RULE = "an integer from 1 to 65535";
function isPrefetch(prefetch: number): boolean {
  return Number.isInteger(prefetch) && prefetch >= 1 && prefetch <= 65535;
}

/**
 * Logging at load. One line per request reads well at workshop pace and
 * costs a write per request at thousands a second; so past
 * {@linkcode LOG_LINES_PER_SECOND} lines in a second, lines of a kind are
 * counted instead, and one line a second says how many. Lines without a
 * kind (connections lost and found) are always written.
 */
class RateLimitedLog {
  readonly #write: ((line: string) => void) | null;
  #windowStart = 0;
  #written = 0;
  readonly #held = new Map<string, number>();
  #timer?: ReturnType<typeof setTimeout>;

  constructor(write: ((line: string) => void) | null) {
    this.#write = write;
  }

  /** Writes the line (or what the function returns, built only if it is written). */
  write(line: string | (() => string), kind?: string): void {
    if (!this.#write) return;
    const now = Date.now();
    if (now - this.#windowStart >= 1000) [this.#windowStart, this.#written] = [now, 0];
    if (kind === undefined || this.#written++ < LOG_LINES_PER_SECOND) {
      return this.#write(typeof line === "string" ? line : line());
    }
    this.#held.set(kind, (this.#held.get(kind) ?? 0) + 1);
    this.#timer ??= setTimeout(() => this.flush(), 1000);
  }

  /** Writes the summary of what was held back, now. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#held.size === 0) return;
    const counts = [...this.#held].map(([kind, count]) => `${count} ${kind}`).join(", ");
    this.#held.clear();
    this.#write?.(` [.] Not shown: ${counts} (at most ${LOG_LINES_PER_SECOND} lines a second)`);
  }
}

// ─── Part 3: the command line ──────────────────────────────────────────────

const USAGE = `Usage: deno run -A rpc_server.ts [options]

Takes requests from a RabbitMQ queue and answers each with fib(n).

Options:
  --url URL        broker URL; give it once per cluster node to fail over
                   between them (default: $AMQP_URL, commas between URLs,
                   else amqp://localhost)
  --queue NAME     request queue (default: rpc_queue)
  --prefetch N     unacked requests at once, 1 to 65535 (default: ${DEFAULT_PREFETCH})
  --queue-type T   how to declare a new queue: "quorum" (default; durable,
                   as today's tutorials declare it) or "classic" (non-durable,
                   as older copies and amqplib's bundled examples do)
  --no-skip-late   compute requests whose caller's deadline has passed
  --quiet          do not log each request
  -h, --help       show this help

Exit status: 0 after SIGINT or SIGTERM, 1 if no broker answers (or
--allow-net is missing), 2 for a usage error.`;

/** Parses the command line; throws a one-line message on bad input. */
function parseCommandLine(args: string[]): ServerOptions | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        url: { type: "string", multiple: true },
        queue: { type: "string" },
        prefetch: { type: "string" },
        "queue-type": { type: "string" },
        "no-skip-late": { type: "boolean" },
        quiet: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (error) {
    throw commandLineError(error, args);
  }
  if (values.help) return "help";
  const prefetch = values.prefetch ?? String(DEFAULT_PREFETCH);
  if (!/^\d+$/.test(prefetch) || !isPrefetch(Number(prefetch))) {
    throw new Error(`--prefetch must be ${PREFETCH_RULE}, got "${hidePassword(prefetch)}"`);
  }
  if (values.queue === "") throw new Error("--queue must not be empty");
  const queueType = values["queue-type"] ?? "quorum";
  if (queueType !== "quorum" && queueType !== "classic") {
    throw new Error(`--queue-type must be "quorum" or "classic", got "${hidePassword(queueType)}"`);
  }
  const urls = values.url
    ? parseBrokerUrls(values.url, "--url")
    : parseBrokerUrls(Deno.env.get("AMQP_URL") ?? "amqp://localhost", "AMQP_URL");
  return {
    url: urls.map((url) => url.href),
    queue: values.queue,
    prefetch: Number(prefetch),
    queueType,
    skipLate: !values["no-skip-late"],
    log: values.quiet ? null : console.log,
  };
}

/** Shutdown: the first signal finishes the requests in progress; a second exits at once. */
function stopOnSignals(server: RpcServer): void {
  let stopping = false;
  const stop = async (signal: Deno.Signal) => {
    if (stopping) {
      console.log(` [!] ${signal} again: exiting now; unacked requests go back to the queue`);
      Deno.exit(1);
    }
    stopping = true;
    console.log(` [x] ${signal}: finishing the requests in progress, then exiting`);
    await server.close();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
  // Windows has no SIGTERM to listen for.
  if (Deno.build.os !== "windows") Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
}

async function main(args: string[]): Promise<void> {
  let options;
  try {
    options = parseCommandLine(args);
  } catch (error) {
    const usage = error instanceof Deno.errors.NotCapable ? "" : " (see --help)";
    console.error(`rpc_server: ${(error as Error).message}${usage}`);
    Deno.exit(usage ? 2 : 1);
  }
  if (options === "help") {
    console.log(USAGE);
    Deno.exit(0);
  }
  try {
    stopOnSignals(await RpcServer.start(options));
  } catch (error) {
    console.error(`rpc_server: ${(error as Error).message}`);
    Deno.exit(1);
  }
}

// ─── Part 4: broker URLs and messages ──────────────────────────────────────
// This block stands, letter for letter, in both rpc_server.ts and
// rpc_client.ts: each script stays one file you can copy on its own.
// rpc_test.ts checks that the two copies are the same.

/** How long a TCP connect plus the AMQP handshake may take, in ms. */
const CONNECT_TIMEOUT_MS = 10_000;

/**
 * Heartbeat, in seconds, asked of the broker. amqplib gives up on a link
 * after two silent intervals, so a peer that vanishes without a word (a
 * dead host, a dropped NAT entry) is noticed in 10 to 15 s. RabbitMQ's
 * default is 60 s: 2 to 3 minutes of calls into the void. A `heartbeat`
 * parameter in the URL (`?heartbeat=30`) overrides it.
 */
const HEARTBEAT_SECONDS = 5;

/** Waits between reconnection attempts: the first, and the most. */
const RECONNECT_FIRST_DELAY_MS = 100;
const RECONNECT_MAX_DELAY_MS = 5_000;

/**
 * Ignores an error, on purpose. Used only where a failure changes nothing:
 * closing what is already closed, or an "error" event whose "close" event
 * (handled elsewhere) says the same.
 */
function ignoreError(_error: unknown): void {}

/** Settles as `work` does, or rejects with `message` after `ms`: whichever comes first. */
function within<T>(work: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

/**
 * Reads one or more broker URLs: a list, or one string with commas between
 * URLs (as `AMQP_URL` may hold). Throws a one-line TypeError naming the bad
 * entry, with any password hidden.
 */
function parseBrokerUrls(value: string | readonly string[], what: string): URL[] {
  const entries = (typeof value === "string" ? [value] : value).flatMap((entry) => entry.split(","))
    .map((entry) => entry.trim());
  if (entries.length === 0 || entries.some((entry) => entry === "")) {
    throw new TypeError(`${what} must list one or more amqp:// URLs, separated by commas`);
  }
  return entries.map((entry, index) => {
    const url = URL.canParse(entry) ? new URL(entry) : undefined;
    if (!url || !/^amqps?:$/.test(url.protocol) || !url.hostname) {
      const which = entries.length > 1 ? ` (entry ${index + 1} of ${entries.length})` : "";
      throw new TypeError(
        `${what}${which} must be an amqp:// or amqps:// URL with a host, got "${
          hidePassword(entry)
        }"`,
      );
    }
    return url;
  });
}

/** The URL with its password replaced by `***`, fit for logs and errors. */
function redact(url: URL): string {
  if (!url.password) return url.href;
  const copy = new URL(url);
  copy.password = "***";
  return copy.href;
}

/**
 * Text the user typed, fit to print: a URL's password becomes `***`; in
 * anything else, whatever lies between the first `:` and the last `@`
 * (where a mistyped URL keeps its password) does.
 */
function hidePassword(text: string): string {
  if (URL.canParse(text) && new URL(text).password) return redact(new URL(text));
  return text.replace(/:.*@/s, ":***@");
}

/**
 * parseArgs' complaint about a command line, fit to print: a URL in what it
 * quotes has its password hidden, and Node's advice about '--' (whose
 * quotes do not balance) is left out.
 */
function commandLineError(error: unknown, args: readonly string[]): Error {
  const message = (error as Error).message.replace(/\. To specify a positional argument.*$/s, "");
  return new Error(args.reduce((text, arg) => text.replaceAll(arg, hidePassword(arg)), message));
}

/** One line saying why talking to the broker failed, without secrets. */
function describeFailure(error: unknown, url: URL): string {
  const message = error instanceof Error ? error.message : String(error);
  const code = (error as { code?: unknown })?.code;
  const where = redact(url);
  if (error instanceof Deno.errors.NotCapable || code === "EPERM") {
    return `not allowed to connect to ${where}: run with --allow-net (or -A)`;
  }
  if (code === "ECONNREFUSED") {
    return `cannot connect to ${where}: connection refused (is RabbitMQ running?)`;
  }
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") {
    return `cannot connect to ${where}: unknown host`;
  }
  if (message === "connect ETIMEDOUT" || code === "ETIMEDOUT") {
    return `cannot connect to ${where}: no AMQP answer within ${CONNECT_TIMEOUT_MS / 1000} s ` +
      `(is that a RabbitMQ port? a firewall or a load balancer with no backend?)`;
  }
  if (/ACCESS[-_]REFUSED/.test(message)) {
    return `cannot log in to ${where}: access refused (wrong user name or password?)`;
  }
  if (message.startsWith("Expected ConnectionOpenOk; got <ConnectionClose")) {
    const vhost = decodeURIComponent(url.pathname.slice(1)) || "/";
    return `cannot open virtual host "${vhost}" on ${where} (does it exist? rabbitmqctl list_vhosts)`;
  }
  if (message === "Unexpected close" || code === "ECONNRESET" || code === "EPIPE") {
    return `the connection to ${where} broke off (${code ?? message})`;
  }
  // amqplib's own messages name the broker's reply code; they never hold the URL.
  return message.split("\n")[0];
}

/**
 * The brokers a program may use (the nodes of a cluster, or just one), and
 * the one it uses now. amqplib reads the fields below each time it connects,
 * so moving on to the next URL moves amqplib's recovery with it.
 */
class Brokers {
  readonly urls: readonly URL[];
  #index = 0;
  #connectedOnce = false;

  constructor(urls: readonly URL[]) {
    this.urls = urls;
  }

  /** The broker connected to, or being tried. */
  get current(): URL {
    return this.urls[this.#index];
  }

  // The fields amqplib's connect() reads from a URL object.
  get protocol(): string {
    return this.current.protocol.slice(0, -1);
  }
  get hostname(): string {
    return this.current.hostname.replace(/^\[|\]$/g, "");
  }
  get port(): number | undefined {
    return this.current.port ? Number(this.current.port) : undefined;
  }
  get username(): string | undefined {
    return this.current.username ? decodeURIComponent(this.current.username) : undefined;
  }
  get password(): string | undefined {
    return this.current.password ? decodeURIComponent(this.current.password) : undefined;
  }
  get vhost(): string {
    return this.current.pathname.slice(1);
  }
  get heartbeat(): number {
    return Number(this.current.searchParams.get("heartbeat") ?? HEARTBEAT_SECONDS);
  }

  /** Called once the first connection is up: from then on, failures back off. */
  connected(): void {
    this.#connectedOnce = true;
  }

  /**
   * amqplib's recovery asks this before each new attempt: go on to the next
   * URL. The first connection tries each URL once, without waiting; later,
   * each full round of the list waits twice as long as the one before (up
   * to 5 s), give or take 20 % so that many clients do not come back at once.
   */
  nextDelay = (attempt: number): number => {
    this.#index = (this.#index + 1) % this.urls.length;
    if (!this.#connectedOnce) return 0;
    const round = Math.floor((attempt - 1) / this.urls.length);
    const delay = Math.min(RECONNECT_MAX_DELAY_MS, RECONNECT_FIRST_DELAY_MS * 2 ** round);
    return Math.round(delay * (0.8 + Math.random() * 0.4));
  };
}

/**
 * Connects to the first broker that answers, with amqplib's recovery: a lost
 * connection is rebuilt on the next broker in turn, and `setup` runs again
 * on every new connection. `log` hears which broker it is on. Fails, with
 * one line per broker tried, if none answers at start.
 */
async function openConnection(
  urls: readonly URL[],
  connectionName: string,
  setup: (model: ChannelModel) => Promise<void>,
  log: (line: string) => void,
): Promise<RecoveringChannelModel> {
  const brokers = new Brokers(urls);
  const failures: string[] = [];
  let started = false;
  const connection = await amqp.connect(brokers, {
    noDelay: true, // with Nagle's algorithm on, every message waits ~40 ms
    timeout: CONNECT_TIMEOUT_MS, // a listener that never speaks AMQP must not hang us
    clientProperties: { connection_name: connectionName },
    recovery: {
      waitForConnect: false, // so that the listeners below hear the first attempt
      initialMaxRetries: brokers.urls.length - 1, // each URL once, then give up
      calculateDelay: brokers.nextDelay,
      setup: async (model: ChannelModel) => {
        coalesceWrites(model);
        if (started || brokers.urls.length > 1) log(` [x] Connected to ${redact(brokers.current)}`);
        await setup(model);
      },
    },
  });
  // Without an "error" listener, an abrupt loss (a reset, a missed heartbeat)
  // would throw out of amqplib and kill the process. "disconnect" says it.
  connection.on("error", ignoreError);
  connection.on("connect-failed", (error: Error) => {
    const failure = describeFailure(error, brokers.current);
    if (started) log(` [!] ${failure}`);
    else failures.push(failure);
  });
  connection.on("disconnect", (error: Error) => {
    log(` [!] Lost ${redact(brokers.current)}: ${describeFailure(error, brokers.current)}`);
  });
  connection.on("reconnect-scheduled", ({ delay }: { delay: number }) => {
    if (started) log(` [!] Reconnecting to ${redact(brokers.current)} in ${delay} ms`);
  });
  try {
    await connection.waitForConnect();
  } catch {
    throw new Error(failures.join("; "));
  }
  started = true;
  brokers.connected();
  return connection;
}

/**
 * Many frames, one write. amqplib hands the socket each AMQP frame on its
 * own, and each becomes a system call of its own: at load, one per request,
 * per reply and per ack, and most of the CPU a server spends. Corking the
 * socket at the first write of a task and uncorking it as soon as that task
 * is done (a microtask) sends the frames of a whole burst in one write; no
 * frame waits for a later task. The socket is amqplib's own (not part of
 * its typed API): if a later amqplib hides it, frames go out one by one again.
 */
function coalesceWrites(model: ChannelModel): void {
  const socket = (model.connection as { stream?: Partial<Socket> }).stream;
  if (!socket?.write || !socket.cork || !socket.uncork) return;
  const { write, cork, uncork } = socket as Socket;
  let corked = false;
  const flush = () => {
    corked = false;
    uncork.call(socket);
  };
  socket.write = (...args: unknown[]) => {
    if (!corked) {
      corked = true;
      cork.call(socket);
      queueMicrotask(flush);
    }
    return write.apply(socket, args);
  };
}

/** The part of a Node socket that coalesceWrites uses. */
type Socket = { write(...args: unknown[]): boolean; cork(): void; uncork(): void };
// ─── end of Part 4 ─────────────────────────────────────────────────────────

// The command line starts here, at the end, once every class above exists.
if (import.meta.main) await main(Deno.args);
