/**
 * The client: sends requests to a server's queue with `reply_to` and a
 * fresh `correlation_id`, and matches each reply to its call, as in
 * RabbitMQ's RPC tutorial, hardened for production.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import type {
  Channel,
  ChannelModel,
  ConsumeMessage,
  Message,
  RecoveringChannelModel,
} from "npm:amqplib@2.3.1";
import { ignoreError, openConnection } from "./_connection.ts";
import { checkTimeout, deadlineHeaders } from "./deadlines.ts";
import { QueueInspector } from "./_diagnosis.ts";
import { type NoReplyDiagnosis, RpcError, timeoutError } from "./errors.ts";
import {
  type CallOptions,
  type ClientOptions,
  DEFAULT_MAX_REPLY_BYTES,
  DEFAULT_TIMEOUT_MS,
} from "./options.ts";
import { RateLimitedLog } from "./_log.ts";
import { type PendingCall, PendingCalls, readReply } from "./_pending.ts";
import { Retrying } from "./_retry.ts";
import { Session } from "./_session.ts";
import { startCallSpan } from "./_tracing.ts";
import { invokeProcedure, type Procedure } from "./procedure.ts";
import { brokerUrls, loginUser } from "./_urls.ts";

/**
 * A client for RPC servers: one connection, one channel, one callback
 * queue, any number of calls at once, to any number of queues.
 *
 * @example
 * ```ts
 * await using client = await RpcClient.connect();
 * const reply = await client.call("echo", "hello", { timeout: 5_000 });
 * console.log(new TextDecoder().decode(reply));
 * ```
 */
export class RpcClient implements AsyncDisposable {
  /** The `connection_name` it shows the broker (`rabbitmqctl list_connections`). */
  readonly connectionName: string;

  /** Calls waiting for their reply, by correlation id. */
  readonly #pending = new PendingCalls((calls) => this.#onDeadline(calls));
  #connection?: RecoveringChannelModel;
  /** The channels of the current connection; undefined while reconnecting. */
  #session?: Session;
  #callbackQueue = "";
  /** Why the broker blocks this connection's publishing (a resource alarm), while it does. */
  #blocked?: string;
  readonly #timeout: number;
  readonly #replyQueue: "exclusive" | "direct";
  /** Whether calls retry unless they say otherwise: the `retry` option. */
  readonly #retry: boolean;
  /** What a lost connection or a refused request does to the calls (see _retry.ts). */
  readonly #retrying: Retrying;
  readonly #maxReplyBytes: number;
  readonly #urls: readonly URL[];
  readonly #userId: string | undefined; // sent as `user_id`: see loginUser
  readonly #trace?: (line: string) => void;
  readonly #log: RateLimitedLog;
  readonly #inspector = new QueueInspector(() => this.#openSideChannel());
  #droppedReplies = 0;
  #closed = false;

  private constructor(options: ClientOptions) {
    this.#urls = brokerUrls(options.url);
    this.#userId = loginUser(this.#urls);
    this.#timeout = checkTimeout(options.timeout ?? DEFAULT_TIMEOUT_MS);
    this.#replyQueue = options.replyQueue ?? "exclusive";
    this.#retry = options.retry ?? false;
    this.#maxReplyBytes = options.maxReplyBytes ?? DEFAULT_MAX_REPLY_BYTES;
    if (!Number.isSafeInteger(this.#maxReplyBytes) || this.#maxReplyBytes < 1) {
      throw new RangeError(
        `maxReplyBytes must be a positive whole number, got ${this.#maxReplyBytes}`,
      );
    }
    this.#trace = options.trace;
    this.#log = new RateLimitedLog(options.log ?? null);
    this.#retrying = new Retrying(this.#pending, (call) => this.#send(call), this.#log);
    this.connectionName = `rpc_client ${crypto.randomUUID().slice(0, 8)}`;
  }

  /**
   * Connects, then sets up the callback queue. Fails at once, with a
   * one-line message, if no broker answers; once connected, a lost
   * connection is rebuilt by itself (calls in flight then fail, or wait
   * with `retry`).
   *
   * @throws {TypeError} for a bad URL; {@linkcode RangeError} for a bad timeout or reply cap.
   */
  static async connect(options: ClientOptions = {}): Promise<RpcClient> {
    const client = new RpcClient(options);
    client.#connection = await openConnection(client.#urls, {
      name: client.connectionName,
      setup: (model) => client.#setUp(model),
      log: (line) => client.#log.write(line),
      blocked: (reason) => client.#onBlocked(reason),
      tls: options.tls,
    });
    return client;
  }

  /** On every new connection: its channels and callback queue (see Session), then the calls that wait. */
  async #setUp(model: ChannelModel): Promise<void> {
    const session = await Session.open(model, this.#replyQueue, {
      onReply: (message) => this.#onReply(message),
      onReturn: (message) => this.#onReturn(message),
      onClosed: (closed) => this.#onClosed(model, closed),
    });
    this.#session = session;
    this.#callbackQueue = session.callbackQueue;
    this.#blocked = undefined; // a new connection starts unblocked
    this.#retrying.sendWaitingCalls(); // with `retry`, the calls a lost connection left waiting
  }

  /**
   * Calls the server on `queue`: a fresh `correlation_id`, the request
   * published with `reply_to` naming our callback queue; settles when the
   * matching reply comes back, with the reply's bytes.
   *
   * @example
   * ```ts
   * await using client = await RpcClient.connect();
   * const reply = await client.call("rpc_queue", "30", { timeout: 5_000 });
   * new TextDecoder().decode(reply); // "832040"
   * ```
   * @throws {RpcError} with `code` saying why the call failed; an aborted
   *   call rejects with the signal's reason instead.
   */
  call(
    queue: string,
    request: Uint8Array | string,
    options: CallOptions = {},
  ): Promise<Uint8Array> {
    const label = options.label ?? `call to "${queue}"`;
    if (this.#closed) {
      return Promise.reject(new RpcError("closed", `${label}: the client is closed`));
    }
    try {
      if (options.timeout !== undefined) checkTimeout(options.timeout);
      options.signal?.throwIfAborted();
    } catch (error) {
      return Promise.reject(error);
    }
    const timeout = options.timeout ?? this.#timeout;
    return new Promise<Uint8Array>((resolve, reject) => {
      const correlationId = crypto.randomUUID();
      // With tracing on, a span for the whole call, its context in the headers.
      const span = startCallSpan(queue, correlationId);
      const call: PendingCall = {
        queue,
        label,
        request: typeof request === "string"
          ? Buffer.from(request)
          : Buffer.from(request.buffer, request.byteOffset, request.byteLength),
        contentType: options.contentType,
        correlationId,
        headers: options.headers || span ? { ...options.headers, ...span?.headers } : undefined,
        deadline: Date.now() + timeout,
        timeout,
        retry: options.retry ?? this.#retry,
        sentOn: undefined, // every field set now: one object shape for all calls
        lostConnection: false,
        refusals: 0,
        resolve: span ? (reply) => (span.end(), resolve(reply)) : resolve,
        reject: span ? (error) => (span.end(error), reject(error)) : reject,
        signal: undefined,
      };
      this.#pending.add(call, options.signal); // before publishing: no reply can outrun it
      this.#send(call);
    });
  }

  /**
   * Calls a {@linkcode Procedure}: the request checked against its schema
   * (`bad-request`, unsent, if invalid) and sent as JSON; resolves to the
   * reply, read as JSON and checked (`bad-reply` if it breaks the contract).
   *
   * @example
   * ```ts
   * import { procedure, RpcClient } from "./mod.ts";
   *
   * const sum = procedure<{ numbers: number[] }, { total: number }>("sum");
   * await using client = await RpcClient.connect();
   * const { total } = await client.invoke(sum, { numbers: [1, 2] }, { timeout: 5_000 });
   * ```
   */
  invoke<Req, Res, ReqIn, ResIn>(
    procedure: Procedure<Req, Res, ReqIn, ResIn>,
    request: ReqIn,
    options?: CallOptions,
  ): Promise<Res> {
    return invokeProcedure(this, procedure, request, options);
  }

  /** Publishes a call's request, with `reply_to`, `correlation_id` and its deadline. */
  #send(call: PendingCall): void {
    const session = this.#session;
    if (!session) return this.#retrying.notConnected(call);
    call.sentOn = session;
    this.#trace?.(
      ` [>] ${call.label} sent, correlation_id ${short(call.correlationId)}, ` +
        `reply_to ${this.#callbackQueue}`,
    );
    try {
      session.publish(
        call.queue,
        call.request,
        {
          replyTo: session.callbackQueue,
          correlationId: call.correlationId,
          contentType: call.contentType,
          mandatory: true, // come back if no queue takes it
          expiration: String(Math.max(1, call.deadline - Date.now())), // nobody waits after this
          headers: { ...call.headers, ...deadlineHeaders(call.deadline) }, // servers skip what nobody awaits
          userId: this.#userId, // the broker checks it: the server learns who called
        },
        call.deadline,
        (refusal) => refusal && this.#retrying.refused(call, session, refusal),
      );
    } catch {
      // amqplib throws if the channel is closing: its "close" is on the way.
      call.sentOn = undefined;
      this.#retrying.notConnected(call);
    }
  }

  /**
   * A reply is ours only if its correlation id is pending. Any other is
   * dropped, quietly: a duplicate (a server died between its reply and its
   * ack, and the request was answered again), or a reply that came after
   * its call timed out.
   */
  #onReply(message: ConsumeMessage | null): void {
    if (message === null) return; // the broker cancelled us: the channel closes next
    const correlationId = message.properties.correlationId;
    const call = this.#pending.get(correlationId);
    if (!call) {
      this.#droppedReplies++;
      this.#trace?.(` [<] reply ${short(correlationId)}: no call waits for it, dropped`);
      return;
    }
    this.#trace?.(` [<] reply ${short(correlationId)}: matches ${call.label}`);
    this.#pending.settle(call, readReply(call, message, this.#maxReplyBytes));
  }

  /**
   * No route: a `mandatory` request that no queue took comes back
   * (basic.return), so a call to a queue that does not exist fails at once.
   */
  #onReturn(message: Message): void {
    const call = this.#pending.get(message.properties.correlationId);
    if (!call) return;
    const text = `${call.label}: no queue named "${call.queue}": is the server running?`;
    this.#pending.settle(call, new RpcError("no-route", text));
  }

  /**
   * Reconnecting. When a channel closes under us, the calls sent on its
   * connection fail, or wait with `retry` (see _retry.ts). Closing the
   * connection hands the repair to amqplib's recovery.
   */
  #onClosed(model: ChannelModel, session: Session): void {
    if (this.#session === session) this.#session = undefined;
    this.#retrying.connectionLost(session);
    if (!this.#closed) model.close().catch(ignoreError);
  }

  /**
   * A resource alarm (memory, disk): the broker stops reading from every
   * connection that publishes, so requests wait in this client and no look
   * at a queue gets an answer. `reason` is the broker's, or undefined once
   * the alarm clears.
   */
  #onBlocked(reason: string | undefined): void {
    this.#blocked = reason;
    this.#log.write(
      reason === undefined
        ? " [x] The broker unblocked this connection"
        : ` [!] The broker is blocking publishers: ${reason}`,
    );
  }

  /**
   * Deadlines. One timer serves all pending calls (see DeadlineSweep); the
   * calls it finds expired are forgotten at once (a late reply is dropped)
   * and reject with `timeout`, saying why as far as one look at their
   * queue can tell.
   */
  #onDeadline(calls: PendingCall[]): void {
    for (const [queue, waiting] of Map.groupBy(calls, (call) => call.queue)) {
      this.#diagnose(queue, waiting).then((diagnosis) => {
        for (const call of waiting) {
          call.reject(timeoutError(call.label, call.timeout, queue, diagnosis));
        }
      });
    }
  }

  /**
   * Why no reply came, as far as is known: a blocked connection needs no
   * look at the queue (none would be answered), and a look takes half a
   * second at most, so a call settles at its deadline, or just after it.
   */
  #diagnose(queue: string, calls: PendingCall[]): Promise<NoReplyDiagnosis> {
    if (this.#blocked !== undefined) {
      return Promise.resolve({ cause: "blocked", detail: this.#blocked });
    }
    if (!this.#session || calls.some((call) => call.lostConnection)) {
      return Promise.resolve({ cause: "disconnected" });
    }
    return this.#inspector.diagnose(queue);
  }

  /** A channel for a look at a queue, on the current connection. */
  #openSideChannel(): Promise<Channel> {
    if (!this.#connection || !this.#session) throw new Error("not connected to the broker");
    return this.#connection.createChannel();
  }

  /** How many servers consume `queue` now; undefined if it does not exist. */
  async consumerCount(queue: string): Promise<number | undefined> {
    return (await this.#inspector.lookUp(queue))?.consumers;
  }

  /** Replies that matched no pending call: duplicates, late or stray replies. */
  get droppedReplies(): number {
    return this.#droppedReplies;
  }

  /** The queue name the requests carry as `reply_to`. */
  get callbackQueue(): string {
    return this.#callbackQueue;
  }

  /** Calls waiting for their reply. */
  get pendingCalls(): number {
    return this.#pending.size;
  }

  /** Shutting down: fails the calls in flight with code `"closed"`, then closes the connection. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const call of this.#pending.values()) {
      this.#pending.settle(call, new RpcError("closed", `${call.label}: the client was closed`));
    }
    this.#pending.stop();
    this.#session = undefined;
    this.#log.flush();
    await this.#connection?.close().catch(ignoreError);
  }

  /** Closes the client, as {@linkcode RpcClient.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** The first 8 characters of a correlation id: enough to tell calls apart in a trace. */
function short(correlationId: unknown): string {
  return typeof correlationId === "string" ? correlationId.slice(0, 8) : "(none)";
}
