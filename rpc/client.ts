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
  ConfirmChannel,
  ConsumeMessage,
  Message,
  RecoveringChannelModel,
} from "npm:amqplib@^2.3.1";
import { ignoreError, openConnection } from "./connection.ts";
import { checkTimeout, DEADLINE_HEADER } from "./deadlines.ts";
import { QueueInspector } from "./diagnosis.ts";
import { type NoReplyDiagnosis, RpcError, timeoutError } from "./errors.ts";
import {
  type CallOptions,
  type ClientOptions,
  DEFAULT_MAX_REPLY_BYTES,
  DEFAULT_TIMEOUT_MS,
} from "./options.ts";
import { type PendingCall, PendingCalls } from "./pending.ts";
import { brokerUrls } from "./urls.ts";

/** RabbitMQ's direct reply-to pseudo-queue: replies come straight to the consuming channel. */
const DIRECT_REPLY_TO = "amq.rabbitmq.reply-to";

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
  /** The channel of the current connection; undefined while reconnecting. */
  #channel?: ConfirmChannel;
  #callbackQueue = "";
  readonly #timeout: number;
  readonly #replyQueue: "exclusive" | "direct";
  readonly #retry: boolean;
  readonly #maxReplyBytes: number;
  readonly #urls: readonly URL[];
  readonly #trace?: (line: string) => void;
  readonly #log: (line: string) => void;
  readonly #inspector = new QueueInspector(() => this.#openSideChannel());
  #droppedReplies = 0;
  #closed = false;

  private constructor(options: ClientOptions) {
    this.#urls = brokerUrls(options.url);
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
    this.#log = options.log ?? ignoreError;
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
      log: client.#log,
    });
    return client;
  }

  /** On every new connection: a confirm channel, the callback queue, consume it. */
  async #setUp(model: ChannelModel): Promise<void> {
    // A confirm channel, so the broker says it took each request.
    const channel = await model.createConfirmChannel();
    channel.on("error", ignoreError); // its "close" event says it all
    channel.on("return", (message: Message) => this.#onReturn(message));
    // The tutorial's callback queue is exclusive and server-named: the broker
    // picks the name, and deletes the queue when this connection ends.
    // Direct reply-to needs no queue at all.
    const callbackQueue = this.#replyQueue === "exclusive"
      ? (await channel.assertQueue("", { exclusive: true })).queue
      : DIRECT_REPLY_TO;
    // Replies are not acked (noAck): a lost reply is a call that times out.
    await channel.consume(callbackQueue, (message) => this.#onReply(message), { noAck: true });
    this.#reconnectWhenClosed(model, channel);
    this.#channel = channel;
    this.#callbackQueue = callbackQueue;
    this.#sendWaitingCalls();
  }

  /**
   * Calls the server on `queue`: a fresh `correlation_id`, the request
   * published with `reply_to` naming our callback queue; settles when the
   * matching reply comes back, with the reply's bytes.
   *
   * @example
   * ```ts
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
      const call: PendingCall = {
        queue,
        label,
        request: typeof request === "string"
          ? Buffer.from(request)
          : Buffer.from(request.buffer, request.byteOffset, request.byteLength),
        correlationId: crypto.randomUUID(),
        deadline: Date.now() + timeout,
        timeout,
        retry: options.retry ?? this.#retry,
        sentOn: undefined, // every field set now: one object shape for all calls
        lostConnection: false,
        resolve,
        reject,
        signal: undefined,
        onAbort: undefined,
      };
      this.#pending.add(call, options.signal); // before publishing: no reply can outrun it
      this.#send(call);
    });
  }

  /** Publishes a call's request, with `reply_to`, `correlation_id` and its deadline. */
  #send(call: PendingCall): void {
    const channel = this.#channel;
    if (!channel) return this.#notConnected(call);
    call.sentOn = channel;
    this.#trace?.(
      ` [>] ${call.label} sent, correlation_id ${short(call.correlationId)}, ` +
        `reply_to ${this.#callbackQueue}`,
    );
    try {
      channel.sendToQueue(call.queue, call.request, {
        replyTo: this.#callbackQueue,
        correlationId: call.correlationId,
        mandatory: true, // come back if no queue takes it
        expiration: String(Math.max(1, call.deadline - Date.now())), // nobody waits after this
        headers: { [DEADLINE_HEADER]: call.deadline }, // servers skip what nobody awaits
      }, (error) => error && this.#notTaken(call, channel, error));
    } catch {
      // amqplib throws if the channel is closing: its "close" is on the way.
      call.sentOn = undefined;
      this.#notConnected(call);
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
    this.#pending.settle(call, this.#readReply(call, message));
  }

  /** A reply: too large, an error reply, or the answer's bytes. */
  #readReply(call: PendingCall, message: Message): Uint8Array | RpcError {
    const { content, properties } = message;
    if (content.length > this.#maxReplyBytes) {
      return new RpcError(
        "bad-reply",
        `${call.label}: the reply has ${content.length} bytes, more than the ${this.#maxReplyBytes} accepted`,
      );
    }
    if (properties.type === "error") return new RpcError("remote", content.toString("utf8"));
    return content;
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
   * Publisher confirms: the broker acks each request it has taken. A nack
   * means it did not: on RabbitMQ 3.10, a channel whose first publish to a
   * quorum queue came while the queue's new leader was still being chosen
   * (just after a cluster node died) has every later publish rejected, and
   * only a confirm tells. So a nack reopens the channel, and the call fails
   * (or, with `retry`, goes out again on the new one).
   */
  #notTaken(call: PendingCall, channel: Channel, error: Error): void {
    if (error.message === "channel closed") return; // the "close" handler deals with it
    this.#log(` [!] The broker did not take a request (${error.message}); reopening the channel`);
    call.sentOn = undefined;
    if (!call.retry) {
      const text = `${call.label}: the broker did not take the request`;
      this.#pending.settle(call, new RpcError("connection-lost", text));
    }
    channel.close().catch(ignoreError);
  }

  /**
   * Reconnecting. When the channel closes, the calls sent on it fail at once
   * with `connection-lost` (their replies would come to a callback queue
   * that is gone), except those with `retry`, which wait to go out again.
   * Closing the connection hands the repair to amqplib's recovery.
   */
  #reconnectWhenClosed(model: ChannelModel, channel: ConfirmChannel): void {
    channel.on("close", () => {
      if (this.#channel === channel) this.#channel = undefined;
      for (const call of this.#pending.values()) {
        if (call.sentOn !== channel && call.sentOn !== undefined) continue;
        call.sentOn = undefined;
        call.lostConnection = true;
        if (!call.retry) {
          const text = `${call.label}: lost the connection to the broker`;
          this.#pending.settle(call, new RpcError("connection-lost", text));
        }
      }
      if (!this.#closed) model.close().catch(ignoreError);
    });
  }

  /** Not connected now: fail at once, or, with `retry`, wait for the reconnection. */
  #notConnected(call: PendingCall): void {
    if (call.retry) return;
    const text = `${call.label}: not connected to the broker (reconnecting)`;
    this.#pending.settle(call, new RpcError("connection-lost", text));
  }

  /**
   * Retrying, opt-in: after a reconnection, calls that wait go out again,
   * with the same correlation id and what is left of their deadline. Safe
   * only for idempotent handlers: the first request may have been answered
   * into the lost callback queue, and is computed twice.
   */
  #sendWaitingCalls(): void {
    for (const call of this.#pending.values()) {
      if (call.sentOn === undefined) this.#send(call);
    }
  }

  /**
   * Deadlines. One timer serves all pending calls (see DeadlineSweep); the
   * calls it finds expired are forgotten at once (a late reply is dropped)
   * and reject with `timeout`, saying why as far as one look at their
   * queue can tell.
   */
  #onDeadline(calls: PendingCall[]): void {
    const byQueue = Map.groupBy(calls, (call) => call.queue);
    for (const [queue, waiting] of byQueue) {
      const connectedThrough = this.#channel && waiting.every((call) => !call.lostConnection);
      const finding: Promise<NoReplyDiagnosis> = connectedThrough
        ? this.#inspector.diagnose(queue)
        : Promise.resolve({ cause: "disconnected" });
      finding.then((diagnosis) => {
        for (const call of waiting) {
          call.reject(timeoutError(call.label, call.timeout, queue, diagnosis));
        }
      });
    }
  }

  /** A channel for a look at a queue, on the current connection. */
  #openSideChannel(): Promise<Channel> {
    if (!this.#connection || !this.#channel) throw new Error("not connected to the broker");
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
    this.#channel = undefined;
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
