/**
 * The server: takes requests from a queue, runs a handler on each, sends
 * the reply to the request's `reply_to` with its `correlation_id`, then
 * acks, as in RabbitMQ's RPC tutorial, hardened for production.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import type {
  Channel,
  ChannelModel,
  ConsumeMessage,
  RecoveringChannelModel,
} from "npm:amqplib@2.3.1";
import type { RequestContext } from "./context.ts";
import type { ServerHealth } from "./health.ts";
import { ignoreError, openConnection } from "./connection.ts";
import { DEADLINE_GRACE_MS, DEADLINE_HEADER } from "./deadlines.ts";
import { BadRequestError } from "./errors.ts";
import { RateLimitedLog } from "./log.ts";
import { startProcessSpan } from "./tracing.ts";
import {
  type Procedure,
  type ProcedureHandler,
  type ProcedureServerOptions,
  serveProcedure,
} from "./procedure.ts";
import {
  DEFAULT_PREFETCH,
  type Handler,
  isPrefetch,
  PREFETCH_RULE,
  type ServerOptions,
} from "./options.ts";
import { declareQueue } from "./queue.ts";
import {
  describeRefusal,
  type Reply,
  type ReplyAddress,
  replyAddress,
  type ReplyProperties,
  ReplySender,
  toBuffer,
} from "./replies.ts";
import { brokerUrls } from "./urls.ts";

/**
 * A running RPC server, from {@linkcode RpcServer.start}. Requests are
 * handled one at a time, in order; run more servers to do more at once.
 *
 * @example
 * ```ts
 * await using server = await RpcServer.start({
 *   queue: "echo",
 *   handler: (request) => new TextDecoder().decode(request).toUpperCase(),
 * });
 * ```
 */
export class RpcServer implements AsyncDisposable {
  /** The queue it consumes. */
  readonly queue: string;
  /** The `connection_name` it shows the broker (`rabbitmqctl list_connections`). */
  readonly connectionName: string;

  readonly #urls: readonly URL[];
  readonly #prefetch: number;
  readonly #queueType: "quorum" | "classic";
  readonly #handler: Handler;
  readonly #describe: (request: Uint8Array) => string | undefined;
  readonly #skipLate: boolean;
  readonly #contentType: string | undefined;
  readonly #log: RateLimitedLog;
  /** The connection requests come in on, and the sender of the replies (rpc/replies.ts). */
  #requests?: RecoveringChannelModel;
  #replies?: ReplySender;
  #consumer?: { channel: Channel; consumerTag: string };
  /** Requests that came while an async handler worked on another. */
  readonly #backlog: { channel: Channel; message: ConsumeMessage }[] = [];
  #working = false;
  /** Async work that close() waits for. */
  readonly #inProgress = new Set<Promise<void>>();
  #answered = 0;
  #skipped = 0;
  #stopping = false;
  /** The connections the broker blocks now (a resource alarm). */
  readonly #blocked = new Set<"requests" | "replies">();
  #closing?: Promise<void>;

  private constructor(options: ServerOptions) {
    this.#urls = brokerUrls(options.url);
    if (!options.queue) throw new TypeError("queue must be a non-empty queue name");
    if (typeof options.handler !== "function") throw new TypeError("handler must be a function");
    this.queue = options.queue;
    this.#prefetch = options.prefetch ?? DEFAULT_PREFETCH;
    if (!isPrefetch(this.#prefetch)) {
      throw new RangeError(`prefetch must be ${PREFETCH_RULE}, got ${this.#prefetch}`);
    }
    this.#queueType = options.queueType ?? "quorum";
    this.#handler = options.handler;
    this.#describe = options.describe ?? ((request) => `request of ${request.length} bytes`);
    this.#skipLate = options.skipLate ?? true;
    this.#contentType = options.contentType;
    this.#log = new RateLimitedLog(options.log === undefined ? console.log : options.log);
    this.connectionName = `rpc_server ${this.queue} ${crypto.randomUUID().slice(0, 8)}`;
  }

  /**
   * Connects, declares the queue, sets prefetch and consumes. A lost
   * connection is rebuilt by itself; start-up fails at once, with a
   * one-line message, if no broker answers.
   *
   * @throws {TypeError} for a bad URL, queue or handler; {@linkcode RangeError} for a bad prefetch.
   */
  static async start(options: ServerOptions): Promise<RpcServer> {
    const server = new RpcServer(options);
    // Replies go out on a connection of their own: see rpc/replies.ts.
    server.#replies = await ReplySender.open(
      server.#urls,
      `${server.connectionName} replies`,
      server.#log,
      (reason) => server.#onBlocked("replies", reason),
      options.tls,
    );
    try {
      server.#requests = await openConnection(server.#urls, {
        name: server.connectionName,
        setup: (model) => server.#consume(model),
        log: (line) => server.#log.write(line),
        blocked: (reason) => server.#onBlocked("requests", reason),
        tls: options.tls,
      });
    } catch (error) {
      await server.#replies.close().catch(ignoreError);
      throw error;
    }
    return server;
  }

  /**
   * Starts a server for a {@linkcode Procedure}: each request read as JSON
   * and checked against its schema (refused with `bad-request`, saying
   * where and why, if invalid), `handler` run on the value, its reply
   * checked and sent as JSON (`content_type: application/json`).
   *
   * @example
   * ```ts
   * import { procedure, RpcServer } from "./mod.ts";
   *
   * const sum = procedure<{ numbers: number[] }, { total: number }>("sum");
   * await using server = await RpcServer.serve(sum, ({ numbers }) => ({
   *   total: numbers.reduce((a, b) => a + b, 0),
   * }));
   * ```
   */
  static serve<Req, Res, ReqIn, ResIn>(
    procedure: Procedure<Req, Res, ReqIn, ResIn>,
    handler: ProcedureHandler<Req, ResIn>,
    options?: ProcedureServerOptions,
  ): Promise<RpcServer> {
    return serveProcedure(procedure, handler, options);
  }

  /** Whether it is connected and consuming, or closing: see rpc/health.ts. */
  health(): ServerHealth {
    const connected = this.#consumer !== undefined;
    return { connected, consuming: connected && !this.#stopping, closing: this.#stopping };
  }

  /** Requests answered so far: results and error replies. */
  get answered(): number {
    return this.#answered;
  }

  /** Requests acked without being computed, because their caller had given up. */
  get skipped(): number {
    return this.#skipped;
  }

  /** On every new connection: a channel, declare the queue, prefetch, consume. */
  async #consume(model: ChannelModel): Promise<void> {
    const channel = await declareQueue(model, this.queue, this.#queueType, this.#log);
    // Fair dispatch: with several servers on the queue, the broker hands
    // each at most `prefetch` requests it has not acked yet.
    await channel.prefetch(this.#prefetch);
    this.#log.write(" [x] Awaiting RPC requests");
    // Acknowledgements (no `noAck`): a request a dead server never acked goes to another server.
    const { consumerTag } = await channel.consume(
      this.queue,
      (message) => this.#onRequest(channel, message),
    );
    this.#consumer = { channel, consumerTag };
    this.#reconnectWhenClosed(model, channel);
  }

  /**
   * A channel the broker closes under a live connection (the queue deleted,
   * an error) would leave us deaf: closing the connection hands the repair
   * to amqplib's recovery, which declares and consumes again.
   */
  #reconnectWhenClosed(model: ChannelModel, channel: Channel): void {
    channel.on("close", () => {
      if (this.#consumer?.channel === channel) this.#consumer = undefined;
      if (!this.#stopping) model.close().catch(ignoreError);
    });
  }

  /** Requests arrive here, in order; async handlers take them one at a time. */
  #onRequest(channel: Channel, message: ConsumeMessage | null): void {
    if (message === null) return this.#onCancelled(channel);
    if (this.#stopping) return giveBack(channel, message); // came on the way to close()
    if (this.#working) this.#backlog.push({ channel, message });
    else this.#compute(channel, message);
  }

  /** The broker cancelled our consumer: the queue was deleted. Reconnecting declares it again. */
  #onCancelled(channel: Channel): void {
    this.#log.write(` [!] The broker cancelled the consumer of "${this.queue}"; reconnecting`);
    channel.close().catch(ignoreError);
  }

  /** Runs the handler on one request; a request nobody can or will read is acked unanswered. */
  #compute(channel: Channel, message: ConsumeMessage): void {
    const span = startProcessSpan(
      this.queue,
      message.properties.correlationId,
      message.properties.headers,
      message.fields.deliveryTag,
    ); // undefined, at no cost, when tracing is off
    if (this.#callerGaveUp(message)) {
      span?.skip();
      return this.#skip(channel, message);
    }
    const address = replyAddress(message, this.#log, span);
    if (!address) {
      span?.end({ code: "no-reply-to", message: "no usable reply_to: nobody to answer" });
      return this.#ack(channel, message);
    }
    let result: Reply | Promise<Reply>;
    try {
      if (!address.correlationId) throw new BadRequestError("request has no correlation_id");
      this.#logRequest(message);
      // Inside the span's context, so that the handler's own spans nest under it.
      const context = placeholderContext(this.queue, message); // issue 25 replaces this
      result = span
        ? span.run(() => this.#handler(message.content, context))
        : this.#handler(message.content, context);
    } catch (error) {
      return this.#reply(channel, message, address, error, true);
    }
    if (result instanceof Promise) this.#replyWhenDone(channel, message, address, result);
    else this.#reply(channel, message, address, result, false);
  }

  /** One line per request (rate-limited), built only if it is shown. */
  #logRequest(message: ConsumeMessage): void {
    if (!this.#log.enabled) return;
    this.#log.write(() => {
      const text = this.#describe(message.content);
      if (text === undefined) return undefined;
      return ` [.] ${text}${message.fields.redelivered ? " (redelivered)" : ""}`;
    }, "requests");
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
   * One request at a time, as in the tutorial: while an async handler works,
   * later requests wait in this server's backlog (at most `prefetch` of
   * them), where a request whose caller gave up is still skipped.
   */
  #replyWhenDone(
    channel: Channel,
    message: ConsumeMessage,
    address: ReplyAddress,
    result: Promise<Reply>,
  ): void {
    this.#working = true;
    this.#track(
      result.then(
        (value) => this.#reply(channel, message, address, value, false),
        (error) => this.#reply(channel, message, address, error, true),
      ).finally(() => {
        this.#working = false;
        while (!this.#working && !this.#stopping && this.#backlog.length > 0) {
          const next = this.#backlog.shift()!;
          this.#compute(next.channel, next.message);
        }
      }),
    );
  }

  /**
   * Sends the reply to `reply_to`, with the request's `correlation_id`, so
   * the caller can tell which call it answers; then acks, only now: a
   * server that dies before this leaves the request to another server.
   * Error replies carry the error's message as body and `type: "error"`.
   */
  #reply(
    channel: Channel,
    message: ConsumeMessage,
    address: ReplyAddress,
    outcome: unknown,
    failed: boolean,
  ): void {
    if (!failed && typeof outcome !== "string" && !(outcome instanceof Uint8Array)) {
      [outcome, failed] = [
        new TypeError(`the handler returned ${typeof outcome}, not a reply`),
        true,
      ];
    }
    const body = failed
      ? Buffer.from(describeRefusal(outcome, this.#log))
      : toBuffer(outcome as Reply);
    const properties = {
      correlationId: address.correlationId,
      type: failed ? "error" : undefined,
      contentType: failed ? undefined : this.#contentType,
    };
    if (!this.#replies!.publish(address.replyTo, body, properties)) {
      return this.#replyWhenReconnected(
        channel,
        message,
        address,
        body,
        properties,
        failed && outcome,
      );
    }
    this.#answered++;
    this.#ack(channel, message);
    address.span?.end(failed ? outcome : undefined);
  }

  /** The reply connection is being rebuilt: the request waits for it, unacked. `failure` is an error reply's error. */
  #replyWhenReconnected(
    channel: Channel,
    message: ConsumeMessage,
    address: ReplyAddress,
    body: Buffer,
    properties: ReplyProperties,
    failure: unknown,
  ): void {
    this.#track((async () => {
      if (await this.#replies!.publishWhenBack(address.replyTo, body, properties)) {
        this.#answered++;
        this.#ack(channel, message);
        return address.span?.end(failure || undefined);
      }
      // Still no reply connection: give the request back for another server.
      this.#log.write(" [!] No reply connection; returning the request to the queue");
      giveBack(channel, message);
      address.span?.end({ code: "requeued", message: "no reply connection" });
    })());
  }

  /** Acks, unless the channel is gone: then the broker gives the request to another server. */
  #ack(channel: Channel, message: ConsumeMessage): void {
    try {
      channel.ack(message);
    } catch {
      this.#log.write(" [!] Lost the channel before acking; the broker will redeliver the request");
    }
  }

  /**
   * A resource alarm (memory, disk): the broker stops reading from the
   * connections that publish, so replies wait here until it clears. Said
   * once when the first connection is blocked, and once when the last is
   * unblocked.
   */
  #onBlocked(connection: "requests" | "replies", reason: string | undefined): void {
    const before = this.#blocked.size;
    if (reason === undefined) this.#blocked.delete(connection);
    else this.#blocked.add(connection);
    if (before === 0 && this.#blocked.size > 0) {
      this.#log.write(
        ` [!] The broker is blocking publishers (${reason}): replies wait until it clears`,
      );
    } else if (before > 0 && this.#blocked.size === 0) {
      this.#log.write(" [x] The broker unblocked publishers: replies go out again");
    }
  }

  /** Work that close() waits for. */
  #track(work: Promise<void>): void {
    this.#inProgress.add(work);
    work.finally(() => this.#inProgress.delete(work));
  }

  /**
   * Shutting down: stops taking requests, finishes the one in progress,
   * gives the ones not started back to the queue, then closes the channels
   * and the connections. Safe to call twice.
   */
  close(): Promise<void> {
    this.#closing ??= this.#shutDown();
    return this.#closing;
  }

  async #shutDown(): Promise<void> {
    this.#stopping = true;
    const consumer = this.#consumer;
    if (consumer) await consumer.channel.cancel(consumer.consumerTag).catch(ignoreError);
    // Requests not started go back to the queue at once, for the next
    // server: a shutdown takes one handler's time, not prefetch handlers'.
    for (const { channel, message } of this.#backlog.splice(0)) giveBack(channel, message);
    while (this.#inProgress.size > 0) await Promise.allSettled([...this.#inProgress]);
    // Channels before their connections: see ReplySender.close.
    await this.#replies?.close();
    await consumer?.channel.close().catch(ignoreError);
    await this.#requests?.close().catch(ignoreError);
    this.#log.flush();
  }

  /** Closes the server, as {@linkcode RpcServer.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Gives a request back to the queue, unanswered; if the channel is gone, the broker does it anyway. */
function giveBack(channel: Channel, message: ConsumeMessage): void {
  try {
    channel.nack(message, false, true);
  } catch (error) {
    ignoreError(error);
  }
}

/** A context without deadline or signal (issue 25 builds the real one). */
function placeholderContext(queue: string, message: ConsumeMessage): RequestContext {
  return {
    queue,
    correlationId: String(message.properties.correlationId),
    headers: message.properties.headers ?? {},
    userId: message.properties.userId,
    redelivered: message.fields.redelivered,
    deadline: undefined,
    signal: new AbortController().signal,
  };
}
