/**
 * The server: takes requests from a queue, runs a handler on each, sends
 * the reply to the request's `reply_to` with its `correlation_id`, then
 * acks, as in RabbitMQ's RPC tutorial, hardened for production.
 *
 * @module
 */
import type {
  Channel,
  ChannelModel,
  ConsumeMessage,
  RecoveringChannelModel,
} from "npm:amqplib@2.3.1";
import type { ServerHealth } from "./health.ts";
import { ignoreError, openConnection } from "./_connection.ts";
import { BadRequestError } from "./errors.ts";
import { RateLimitedLog } from "./_log.ts";
import {
  type Procedure,
  type ProcedureHandler,
  type ProcedureServerOptions,
  serveProcedure,
} from "./procedure.ts";
import {
  checkMs,
  DEFAULT_CLOSE_TIMEOUT_MS,
  DEFAULT_PREFETCH,
  type Handler,
  isPrefetch,
  PREFETCH_RULE,
  type ReplyToRule,
  type ServerOptions,
} from "./options.ts";
import { declareQueue } from "./_queue.ts";
import { ReplySender } from "./_replies.ts";
import { type RequestHost, RpcRequest } from "./_request.ts";
import { brokerUrls } from "./_urls.ts";

/**
 * A running RPC server, from {@linkcode RpcServer.start}. Up to
 * `concurrency` async handlers run at once; each gets the request's bytes
 * and its {@linkcode RequestContext}.
 *
 * @example
 * ```ts
 * await using server = await RpcServer.start({
 *   queue: "echo",
 *   handler: (request) => new TextDecoder().decode(request).toUpperCase(),
 *   concurrency: 20,
 *   handlerTimeout: 10_000,
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
  readonly #concurrency: number;
  readonly #handlerTimeout?: number;
  readonly #closeTimeout: number;
  readonly #allowReplyTo?: ReplyToRule;
  readonly #queueType: "quorum" | "classic";
  readonly #handler: Handler;
  readonly #describe: (request: Uint8Array) => string | undefined;
  readonly #skipLate: boolean;
  readonly #contentType: string | undefined;
  readonly #log: RateLimitedLog;
  /** The connection requests come in on, and the sender of the replies (rpc/_replies.ts). */
  #requests?: RecoveringChannelModel;
  #host?: RequestHost;
  #consumer?: { channel: Channel; consumerTag: string };
  /** Requests taken, waiting for a free slot, in order. */
  readonly #waiting: RpcRequest[] = [];
  /** Requests whose async handler holds a slot, until each is acked or given back. */
  readonly #running = new Set<RpcRequest>();
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
    [this.#prefetch, this.#concurrency] = slots(options.prefetch, options.concurrency);
    this.#handlerTimeout = checkMs("handlerTimeout", options.handlerTimeout);
    this.#closeTimeout = checkMs("closeTimeout", options.closeTimeout) ?? DEFAULT_CLOSE_TIMEOUT_MS;
    this.#allowReplyTo = options.allowReplyTo;
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
   * @throws {TypeError} for a bad URL, queue or handler; {@linkcode RangeError}
   *   for a bad prefetch, concurrency, handlerTimeout or closeTimeout.
   */
  static async start(options: ServerOptions): Promise<RpcServer> {
    const server = new RpcServer(options);
    // Replies go out on a connection of their own: see rpc/_replies.ts.
    const replies = await ReplySender.open(
      server.#urls,
      `${server.connectionName} replies`,
      server.#log,
      (reason) => server.#onBlocked("replies", reason),
      options.tls,
    );
    server.#host = {
      queue: server.queue,
      log: server.#log,
      replies,
      allowReplyTo: server.#allowReplyTo,
      contentType: server.#contentType,
      answered: () => void server.#answered++,
    };
    try {
      server.#requests = await openConnection(server.#urls, {
        name: server.connectionName,
        setup: (model) => server.#consume(model),
        log: (line) => server.#log.write(line),
        blocked: (reason) => server.#onBlocked("requests", reason),
        tls: options.tls,
      });
    } catch (error) {
      await replies.close().catch(ignoreError);
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
   * `consumer_timeout`, an error) would leave us deaf: closing the
   * connection hands the repair to amqplib's recovery, which declares and
   * consumes again. The broker gives the channel's unacked requests to a
   * server again, so their handlers' signals abort, their results are
   * dropped, and their slots are free for the new channel: the
   * bookkeeping starts clean.
   */
  #reconnectWhenClosed(model: ChannelModel, channel: Channel): void {
    channel.on("close", () => {
      if (this.#consumer?.channel === channel) this.#consumer = undefined;
      const lost = "the server lost the request's channel; the broker delivers it again";
      for (const request of [...this.#waiting, ...this.#running]) {
        if (request.channel === channel) request.abandon(lost, false);
      }
      this.#waiting.splice(0, Infinity, ...this.#waiting.filter((r) => r.channel !== channel));
      if (!this.#stopping) model.close().catch(ignoreError);
    });
  }

  /** Requests arrive here, in order, and wait for a free slot. */
  #onRequest(channel: Channel, message: ConsumeMessage | null): void {
    if (message === null) return this.#onCancelled(channel);
    const request = new RpcRequest(this.#host!, channel, message);
    if (this.#stopping) return request.giveBack(); // came on the way to close()
    this.#waiting.push(request);
    this.#startWaiting();
  }

  /** The broker cancelled our consumer: the queue was deleted. Reconnecting declares it again. */
  #onCancelled(channel: Channel): void {
    this.#log.write(` [!] The broker cancelled the consumer of "${this.queue}"; reconnecting`);
    channel.close().catch(ignoreError);
  }

  /** Starts waiting requests while slots are free, oldest first. */
  #startWaiting(): void {
    while (!this.#stopping && this.#running.size < this.#concurrency) {
      const request = this.#waiting.shift();
      if (!request) return;
      this.#start(request);
    }
  }

  /**
   * Runs the handler on one request. A request nobody can or will read is
   * acked unanswered; whatever the handler throws (any value, at once or
   * later) becomes an error reply. An async handler holds a slot until its
   * request is acked: when it settles, or at `handlerTimeout`.
   */
  #start(request: RpcRequest): void {
    request.trace(); // undefined, at no cost, when tracing is off
    if (this.#skipLate && request.gaveUp()) return this.#skip(request);
    if (!request.address()) return;
    let result: unknown;
    try {
      if (!request.message.properties.correlationId) {
        throw new BadRequestError("request has no correlation_id");
      }
      this.#logRequest(request.message);
      const context = request.context();
      // Inside the span's context, so that the handler's own spans nest under it.
      result = request.run(() => this.#handler(request.message.content, context));
    } catch (error) {
      return request.fail(error);
    }
    if (!(result instanceof Promise)) return request.succeed(result);
    this.#running.add(request);
    request.watch(this.#handlerTimeout);
    result.then((value) => request.succeed(value), (error) => request.fail(error));
    request.done.then(() => {
      this.#running.delete(request);
      this.#startWaiting();
    });
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
   * a request taken after it (it waited in this server while the caller
   * timed out) is acked and not computed, so an overloaded server catches
   * up instead of answering the void.
   */
  #skip(request: RpcRequest): void {
    this.#skipped++;
    this.#log.write(" [.] Skipped a request whose caller gave up (deadline passed)", "skipped");
    request.skip();
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

  /**
   * Shutting down: stops taking requests, gives the ones not started back
   * to the queue, waits for the running handlers (at most `closeTimeout`),
   * then aborts the signals of those still running and gives their
   * requests back too, and closes the channels and the connections. Safe
   * to call twice.
   */
  close(): Promise<void> {
    this.#closing ??= this.#shutDown();
    return this.#closing;
  }

  async #shutDown(): Promise<void> {
    this.#stopping = true;
    const consumer = this.#consumer;
    if (consumer) await consumer.channel.cancel(consumer.consumerTag).catch(ignoreError);
    // Requests not started go back to the queue at once, for the next server.
    for (const request of this.#waiting.splice(0)) request.giveBack();
    const running = Promise.all([...this.#running].map((request) => request.done));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<void>((resolve) => timer = setTimeout(resolve, this.#closeTimeout));
    await Promise.race([running, late]).finally(() => clearTimeout(timer));
    for (const request of this.#running) request.abandon("the server is closing", true);
    // Channels before their connections: see ReplySender.close.
    await this.#host?.replies.close();
    await consumer?.channel.close().catch(ignoreError);
    await this.#requests?.close().catch(ignoreError);
    this.#log.flush();
  }

  /** Closes the server, as {@linkcode RpcServer.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * `[prefetch, concurrency]` from the options. Concurrency defaults to
 * prefetch; prefetch to {@linkcode DEFAULT_PREFETCH}, raised to a larger
 * concurrency. A prefetch set below the concurrency is refused: the
 * broker would never hand over enough requests to fill the slots.
 */
function slots(prefetch: number | undefined, concurrency: number | undefined): [number, number] {
  for (const [name, value] of [["prefetch", prefetch], ["concurrency", concurrency]] as const) {
    if (value !== undefined && !isPrefetch(value)) {
      throw new RangeError(`${name} must be ${PREFETCH_RULE}, got ${value}`);
    }
  }
  if (prefetch !== undefined && concurrency !== undefined && prefetch < concurrency) {
    throw new RangeError(
      `prefetch (${prefetch}) must be at least concurrency (${concurrency}): ` +
        "the broker hands over at most prefetch requests at once",
    );
  }
  const taken = prefetch ?? Math.max(DEFAULT_PREFETCH, concurrency ?? 0);
  return [taken, concurrency ?? taken];
}
