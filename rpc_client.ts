/**
 * # rpc_client.ts: the client of RabbitMQ tutorial six ("RPC"), for Deno
 *
 * Sends `n` to the queue `rpc_queue` and waits for fib(n) on its callback
 * queue, matching the reply to the call by `correlation_id`.
 *
 * ```sh
 * deno run -A rpc_client.ts 30          # [x] Requesting fib(30)  [.] Got 832040
 * deno run -A rpc_client.ts 10 20 30    # three calls at once, one callback queue
 * deno run -A rpc_client.ts --help      # the options
 * ```
 *
 * Permissions: `--allow-net` (the broker) and `--allow-env` (`AMQP_URL`);
 * `deno task client` grants just those two, `-A` grants everything.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import amqp from "npm:amqplib@^2.3.1";
import type {
  Channel,
  ChannelModel,
  ConfirmChannel,
  ConsumeMessage,
  Message,
  RecoveringChannelModel,
} from "npm:amqplib@^2.3.1";

// ─── Part 1: the tutorial ──────────────────────────────────────────────────

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
  /** The `connection_name` it shows the broker (`rabbitmqctl list_connections`). */
  readonly connectionName: string;

  /**
   * Step 1: connect, then set up the callback queue. Fails at once, with a
   * one-line message, if no broker answers; once connected, a lost
   * connection is rebuilt by itself (calls in flight then fail, or wait
   * with `retry`).
   */
  static async connect(options: ClientOptions = {}): Promise<FibonacciRpcClient> {
    const client = new FibonacciRpcClient(options);
    client.#connection = await openConnection(
      client.#urls,
      client.connectionName,
      (model) => client.#setUp(model),
      client.#log,
    );
    return client;
  }

  /** Steps 2 and 3, on every new connection: a channel, the callback queue, consume it. */
  async #setUp(model: ChannelModel): Promise<void> {
    // A confirm channel, so the broker says it took each request (Part 2).
    const channel = await model.createConfirmChannel();
    channel.on("error", ignoreError); // its "close" event says it all
    channel.on("return", (message: Message) => this.#onReturn(message));
    // Step 2: the callback queue. The tutorial's is exclusive and
    // server-named: the broker picks the name, and deletes the queue when
    // this connection ends. Direct reply-to needs no queue at all (see
    // ClientOptions.replyQueue for what it costs on a cluster).
    const callbackQueue = this.#options.replyQueue === "exclusive"
      ? (await channel.assertQueue("", { exclusive: true })).queue
      : DIRECT_REPLY_TO;
    // Step 3: consume it. Replies are not acked (noAck): a lost reply is a
    // call that times out.
    await channel.consume(callbackQueue, (message) => this.#onReply(message), { noAck: true });
    this.#reconnectWhenClosed(model, channel);
    this.#channel = channel;
    this.#callbackQueue = callbackQueue;
    this.#sendWaitingCalls();
  }

  /**
   * Step 4: call fib(n) on a server. A fresh `correlation_id` for each
   * call; the request goes to the queue with `reply_to` naming our callback
   * queue; the promise settles when the matching reply comes back.
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
    const refusal = this.#refuse(n, options);
    if (refusal !== undefined) return Promise.reject(refusal);
    const timeout = options.timeout ?? this.#options.timeout;
    return new Promise<bigint>((resolve, reject) => {
      const call: PendingCall = {
        n,
        correlationId: crypto.randomUUID(),
        deadline: Date.now() + timeout,
        timeout,
        retry: options.retry ?? this.#options.retry,
        sentOn: undefined, // every field set now: one object shape for all calls
        lostConnection: false,
        resolve,
        reject,
        signal: undefined,
        onAbort: undefined,
      };
      // Registered before publishing, so that no reply can outrun its call.
      this.#pending.set(call.correlationId, call);
      this.#deadlines.add(call);
      this.#watchAbort(call, options.signal);
      this.#send(call);
    });
  }

  /** Step 4, continued: publish n, with `reply_to` and `correlation_id`. */
  #send(call: PendingCall): void {
    const channel = this.#channel;
    if (!channel) return this.#notConnected(call);
    call.sentOn = channel;
    this.#trace?.(
      ` [>] fib(${call.n}) sent, correlation_id ${short(call.correlationId)}, ` +
        `reply_to ${this.#callbackQueue}`,
    );
    try {
      channel.sendToQueue(this.queue, Buffer.from(String(call.n)), {
        replyTo: this.#callbackQueue,
        correlationId: call.correlationId,
        mandatory: true, // Part 2: come back if no queue takes it
        expiration: String(Math.max(1, call.deadline - Date.now())), // Part 2: deadlines
        headers: { [DEADLINE_HEADER]: call.deadline }, // Part 2: servers skip what nobody awaits
      }, (error) => error && this.#notTaken(call, channel, error));
    } catch {
      // amqplib throws if the channel is closing: its "close" is on the way.
      call.sentOn = undefined;
      this.#notConnected(call);
    }
  }

  /**
   * Step 5: a reply is ours only if its correlation id is pending. Any other
   * is dropped, quietly: a duplicate (a server died between its reply and
   * its ack, and the request was answered again), or a reply that came
   * after its call timed out.
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
    this.#trace?.(` [<] reply ${short(correlationId)}: matches fib(${call.n})`);
    this.#settle(call, readReply(call, message, this.#options.maxReplyBytes));
  }

  // ─── Part 2: what the tutorial leaves open ─────────────────────────────────
  // (the methods here; the functions and types they use follow the class)

  // The client's state, set from its options (ClientOptions, below).
  /** Calls waiting for their reply, by correlation id. */
  readonly #pending = new Map<string, PendingCall>();
  #connection?: RecoveringChannelModel;
  /** The channel of the current connection; undefined while reconnecting. */
  #channel?: ConfirmChannel;
  #callbackQueue = "";
  readonly #options: Required<Omit<ClientOptions, "url" | "queue" | "trace" | "log">>;
  readonly #urls: readonly URL[];
  readonly #trace?: (line: string) => void;
  readonly #log: (line: string) => void;
  readonly #deadlines = new DeadlineSweep((calls) => this.#onDeadline(calls));
  #lastDiagnosis?: { at: number; finding: Promise<NoReplyDiagnosis> };
  #droppedReplies = 0;
  #closed = false;

  private constructor(options: ClientOptions) {
    const url = options.url ?? Deno.env.get("AMQP_URL") ?? "amqp://localhost";
    this.#urls = parseBrokerUrls(url, "the broker URL");
    this.queue = options.queue ?? "rpc_queue";
    this.#options = {
      timeout: checkTimeout(options.timeout ?? DEFAULT_TIMEOUT_MS),
      replyQueue: options.replyQueue ?? "exclusive",
      retry: options.retry ?? false,
      maxReplyBytes: options.maxReplyBytes ?? DEFAULT_MAX_REPLY_BYTES,
    };
    const { maxReplyBytes } = this.#options;
    if (!Number.isSafeInteger(maxReplyBytes) || maxReplyBytes < 1) {
      throw new RangeError(`maxReplyBytes must be a positive whole number, got ${maxReplyBytes}`);
    }
    this.#trace = options.trace;
    this.#log = options.log ?? ignoreError;
    this.connectionName = `rpc_client ${crypto.randomUUID().slice(0, 8)}`;
  }

  /** Bad calls, refused before anything is sent. */
  #refuse(n: number, options: CallOptions): unknown {
    if (!Number.isSafeInteger(n) || n < 0) {
      return new RangeError(`n must be a non-negative integer, got ${n}`);
    }
    if (this.#closed) return new RpcError("closed", `fib(${n}): the client is closed`);
    try {
      if (options.timeout !== undefined) checkTimeout(options.timeout);
      options.signal?.throwIfAborted();
    } catch (error) {
      return error;
    }
    return undefined;
  }

  /**
   * Ends one pending call: forgets it, and resolves it with a bigint or
   * rejects it with anything else (an RpcError, an abort reason).
   */
  #settle(call: PendingCall, outcome: unknown): void {
    if (!this.#forget(call)) return;
    if (typeof outcome === "bigint") call.resolve(outcome);
    else call.reject(outcome);
  }

  /** Takes a call out of `pending`, so that its reply, if one comes, is dropped. */
  #forget(call: PendingCall): boolean {
    if (this.#pending.get(call.correlationId) !== call) return false;
    this.#pending.delete(call.correlationId);
    this.#deadlines.delete(call);
    if (call.onAbort) call.signal?.removeEventListener("abort", call.onAbort);
    return true;
  }

  /** Aborts: a signal's abort rejects the call with the signal's reason. */
  #watchAbort(call: PendingCall, signal: AbortSignal | undefined): void {
    if (!signal) return;
    call.signal = signal;
    call.onAbort = () => this.#settle(call, signal.reason);
    signal.addEventListener("abort", call.onAbort, { once: true });
  }

  /**
   * No route: a `mandatory` request that no queue took comes back
   * (basic.return), so a call to a queue that does not exist fails at once.
   */
  #onReturn(message: Message): void {
    const call = this.#pending.get(message.properties.correlationId);
    if (!call) return;
    this.#settle(
      call,
      new RpcError(
        "no-route",
        `fib(${call.n}): no queue named "${this.queue}": is the server running?`,
      ),
    );
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
      this.#settle(
        call,
        new RpcError("connection-lost", `fib(${call.n}): the broker did not take the request`),
      );
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
          this.#settle(
            call,
            new RpcError("connection-lost", `fib(${call.n}): lost the connection to the broker`),
          );
        }
      }
      if (!this.#closed) model.close().catch(ignoreError);
    });
  }

  /** Not connected now: fail at once, or, with `retry`, wait for the reconnection. */
  #notConnected(call: PendingCall): void {
    if (!call.retry) {
      this.#settle(
        call,
        new RpcError(
          "connection-lost",
          `fib(${call.n}): not connected to the broker (reconnecting)`,
        ),
      );
    }
  }

  /**
   * Retrying, opt-in: after a reconnection, calls that wait go out again,
   * with the same correlation id and what is left of their deadline. Safe
   * because fib is idempotent: computing it twice (the first request may
   * have been answered into the lost callback queue) harms nobody. A
   * handler that is not must not be called with `retry`.
   */
  #sendWaitingCalls(): void {
    for (const call of this.#pending.values()) {
      if (call.sentOn === undefined) this.#send(call);
    }
  }

  /**
   * Deadlines. One timer serves all pending calls (see DeadlineSweep); the
   * calls it finds expired are forgotten at once (a late reply is dropped)
   * and reject with `timeout`, saying why as far as one look at the queue
   * can tell.
   */
  #onDeadline(calls: PendingCall[]): void {
    const expired = calls.filter((call) => this.#forget(call));
    const connectedThrough = this.#channel && expired.every((call) => !call.lostConnection);
    const finding: Promise<NoReplyDiagnosis> = connectedThrough
      ? this.#diagnose()
      : Promise.resolve({ cause: "disconnected" });
    finding.then((diagnosis) => {
      for (const call of expired) call.reject(timeoutError(call, this.queue, diagnosis));
    });
  }

  /**
   * Why no reply came. One look at the queue serves every call that times
   * out within a second of it, so that 10,000 calls timing out together
   * cost one round trip, not 10,000.
   */
  #diagnose(): Promise<NoReplyDiagnosis> {
    const now = Date.now();
    if (this.#lastDiagnosis && now - this.#lastDiagnosis.at < DIAGNOSIS_REUSE_MS) {
      return this.#lastDiagnosis.finding;
    }
    const lookUp = within(
      this.#lookUpQueue(),
      LOOKUP_TIMEOUT_MS,
      "the broker did not answer in time",
    );
    const finding = lookUp.then(
      (queue): NoReplyDiagnosis =>
        queue === undefined
          ? { cause: "no-queue" }
          : { cause: queue.consumers === 0 ? "no-server" : "no-answer", ...queue },
      (error): NoReplyDiagnosis => ({ cause: "unknown", detail: (error as Error).message }),
    );
    this.#lastDiagnosis = { at: now, finding };
    return finding;
  }

  /**
   * No consumer: how many servers consume the request queue now, and how
   * many requests wait in it; undefined if the queue does not exist. Uses a
   * channel of its own, since asking about a missing queue closes it.
   */
  async #lookUpQueue(): Promise<{ consumers: number; queued: number } | undefined> {
    const connection = this.#connection;
    if (!connection || !this.#channel) throw new Error("not connected to the broker");
    const channel = await connection.createChannel();
    channel.on("error", ignoreError);
    try {
      const { consumerCount, messageCount } = await channel.checkQueue(this.queue);
      return { consumers: consumerCount, queued: messageCount };
    } catch (error) {
      if ((error as { code?: number }).code === 404) return undefined;
      throw error;
    } finally {
      await channel.close().catch(ignoreError);
    }
  }

  /** How many servers consume the request queue now; undefined if it does not exist. */
  async consumerCount(): Promise<number | undefined> {
    return (await this.#lookUpQueue())?.consumers;
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
      this.#settle(call, new RpcError("closed", `fib(${call.n}): the client was closed`));
    }
    this.#deadlines.stop();
    this.#channel = undefined;
    await this.#connection?.close().catch(ignoreError);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

// ─── Part 2, continued: types and functions ────────────────────────────────

/** A call waiting for its reply, kept in `pending` under its correlation id. */
interface PendingCall {
  readonly n: number;
  readonly correlationId: string;
  /** When the caller stops waiting: ms since 1970. */
  readonly deadline: number;
  readonly timeout: number;
  /** Wait for a reconnection and send again, instead of failing at once (Part 2). */
  readonly retry: boolean;
  /** The channel it went out on; undefined while it waits to be sent. */
  sentOn?: Channel;
  /** It waited through a lost connection. */
  lostConnection?: boolean;
  resolve(value: bigint): void;
  reject(error: unknown): void;
  signal?: AbortSignal;
  onAbort?: () => void;
}

/** The deadline of a call when neither the client nor the call sets one, in ms. */
export const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * The largest reply accepted, in bytes. fib(10000), the largest the server
 * computes, has 2,090 digits; anything much larger is not an answer, and
 * reading it would stall the client (10 MiB of digits: seconds).
 */
export const DEFAULT_MAX_REPLY_BYTES = 64 * 1024;

/** RabbitMQ's direct reply-to pseudo-queue: replies come straight to the consuming channel. */
const DIRECT_REPLY_TO = "amq.rabbitmq.reply-to";

/** The header that carries a request's deadline: ms since 1970. */
const DEADLINE_HEADER = "x-deadline";

/** How long one look at the queue serves the timeouts that follow it, and how long it may take, in ms. */
const DIAGNOSIS_REUSE_MS = 1_000;
const LOOKUP_TIMEOUT_MS = 1_000;

/** Options for {@linkcode FibonacciRpcClient.connect}. Every field has a default. */
export interface ClientOptions {
  /**
   * Broker URL, or several (the nodes of a cluster): the client uses the
   * first that answers and moves on to the next when it loses one.
   * Default: `$AMQP_URL` (commas between URLs), else `amqp://localhost`.
   */
  url?: string | string[];
  /** The server's request queue. Default: `"rpc_queue"`. */
  queue?: string;
  /** Deadline of each call in ms, unless the call sets its own. Default: {@linkcode DEFAULT_TIMEOUT_MS}. */
  timeout?: number;
  /**
   * Where replies come back. `"exclusive"` (default): the tutorial's
   * exclusive, server-named callback queue, declared on every connection.
   * `"direct"`: RabbitMQ's direct reply-to, which needs no queue (on a
   * cluster, see README: a reply to a caller whose node died can crash the
   * replying server's connection on RabbitMQ 3.10).
   */
  replyQueue?: "exclusive" | "direct";
  /**
   * When the connection drops, keep calls in flight waiting and send them
   * again once reconnected, within their own deadline, instead of failing
   * them at once with `connection-lost`. Default: `false` (fail fast). Only
   * for idempotent work, like fib. A call can override it.
   */
  retry?: boolean;
  /** Replies larger than this many bytes fail with `bad-reply`, unread. Default: {@linkcode DEFAULT_MAX_REPLY_BYTES}. */
  maxReplyBytes?: number;
  /** Hears a line for every request sent and reply received (how replies match calls). Default: none. */
  trace?: (line: string) => void;
  /** Hears a line when the connection is lost, and which broker it is on. Default: none. */
  log?: (line: string) => void;
}

/** Options for one {@linkcode FibonacciRpcClient.call}. */
export interface CallOptions {
  /** Deadline in ms. Default: the client's `timeout`. */
  timeout?: number;
  /** Aborting it rejects the call with the signal's reason. */
  signal?: AbortSignal;
  /** Wait for a reconnection and send again. Default: the client's `retry`. */
  retry?: boolean;
}

/** Why an {@linkcode RpcError} was raised. */
export type RpcErrorCode =
  | "remote" // the server answered with an error reply
  | "timeout" // no reply before the deadline; `diagnosis` says why
  | "no-route" // the request queue does not exist
  | "connection-lost" // the broker connection dropped, or is reconnecting
  | "closed" // the client was closed
  | "bad-reply"; // the reply was not a decimal integer, or too large

/**
 * Why a call timed out, as far as one look at the request queue tells:
 * - `"no-server"`: nobody consumes the queue; the request waits in it.
 * - `"no-answer"`: servers consume it but did not answer in time
 *   (overloaded, if `queued` is large; or slow, or the reply was lost).
 * - `"disconnected"`: the connection to the broker was lost meanwhile.
 * - `"no-queue"`: the queue is gone.
 * - `"unknown"`: the look failed; `detail` says why.
 */
export interface NoReplyDiagnosis {
  cause: "no-server" | "no-answer" | "disconnected" | "no-queue" | "unknown";
  /** Servers consuming the request queue. */
  consumers?: number;
  /** Requests waiting in the request queue, not yet taken by any server. */
  queued?: number;
  detail?: string;
}

/** A failed call. `code` says why; for `"remote"`, `message` is the server's. */
export class RpcError extends Error {
  override name = "RpcError";
  /** Why the call failed. */
  readonly code: RpcErrorCode;
  /** For a `"timeout"`: why no reply came. */
  readonly diagnosis?: NoReplyDiagnosis;
  constructor(code: RpcErrorCode, message: string, diagnosis?: NoReplyDiagnosis) {
    super(message);
    this.code = code;
    this.diagnosis = diagnosis;
  }
}

/** The timeout error for a call, with what the diagnosis found, in words an operator can act on. */
function timeoutError(call: PendingCall, queue: string, diagnosis: NoReplyDiagnosis): RpcError {
  const { consumers, queued } = diagnosis;
  const waiting = `${queued} request${queued === 1 ? "" : "s"} waiting in it`;
  const servers = consumers === 1 ? "1 server consumes" : `${consumers} servers consume`;
  const why = {
    "no-server": `no server consumes "${queue}" (${waiting}; start one: deno run -A rpc_server.ts)`,
    "no-answer": `${servers} "${queue}" but none answered in time ` +
      `(${waiting}: overloaded? add servers, or allow more time)`,
    "disconnected": "the connection to the broker was lost meanwhile",
    "no-queue": `the queue "${queue}" no longer exists`,
    "unknown": `could not look at "${queue}" (${diagnosis.detail})`,
  }[diagnosis.cause];
  const message = `fib(${call.n}): no reply within ${call.timeout} ms: ${why}`;
  return new RpcError("timeout", message, diagnosis);
}

/** Replies: too large, an error reply, or the decimal answer. */
function readReply(call: PendingCall, message: Message, maxReplyBytes: number): bigint | RpcError {
  const { content, properties } = message;
  if (content.length > maxReplyBytes) {
    return new RpcError(
      "bad-reply",
      `fib(${call.n}): the reply has ${content.length} bytes, more than the ${maxReplyBytes} accepted`,
    );
  }
  if (properties.type === "error") return new RpcError("remote", content.toString("utf8"));
  if (isAsciiDigits(content)) return BigInt(content.toString("latin1"));
  const body = content.toString("utf8");
  const digits = body.trim(); // white space around the digits is fine too
  if (/^\d+$/.test(digits)) return BigInt(digits);
  return new RpcError(
    "bad-reply",
    `fib(${call.n}): the server replied ${JSON.stringify(body.slice(0, 80))}`,
  );
}

/** Whether the bytes are one or more ASCII digits, and nothing else: a reply as our server sends it. */
function isAsciiDigits(bytes: Uint8Array): boolean {
  for (const byte of bytes) if (byte < 48 || byte > 57) return false;
  return bytes.length > 0;
}

/**
 * Deadlines, with one timer for all pending calls rather than one each.
 * Calls with the same timeout expire in the order they were made, so each
 * timeout's calls form a queue whose head expires first: the timer is set
 * for the earliest head, and a sweep looks only at heads.
 */
class DeadlineSweep {
  readonly #queues = new Map<number, Set<PendingCall>>();
  readonly #onExpired: (calls: PendingCall[]) => void;
  #timer?: ReturnType<typeof setTimeout>;
  #timerAt = Infinity;

  constructor(onExpired: (calls: PendingCall[]) => void) {
    this.#onExpired = onExpired;
  }

  add(call: PendingCall): void {
    let queue = this.#queues.get(call.timeout);
    if (!queue) this.#queues.set(call.timeout, queue = new Set());
    queue.add(call);
    if (call.deadline < this.#timerAt) this.#setTimer(call.deadline);
  }

  /** Forgets a call. The timer stays as it is: when it fires early, the sweep sets it again. */
  delete(call: PendingCall): void {
    this.#queues.get(call.timeout)?.delete(call);
  }

  /** Stops the timer, for good. */
  stop(): void {
    this.#setTimer(Infinity);
  }

  #setTimer(at: number): void {
    clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = at === Infinity ? undefined : setTimeout(() => this.#sweep(), at - Date.now());
  }

  #sweep(): void {
    const now = Date.now();
    const expired: PendingCall[] = [];
    let next = Infinity;
    for (const [timeout, queue] of this.#queues) {
      if (queue.size === 0) this.#queues.delete(timeout);
      for (const call of queue) {
        if (call.deadline > now) {
          next = Math.min(next, call.deadline);
          break;
        }
        expired.push(call);
      }
    }
    this.#setTimer(next);
    if (expired.length > 0) this.#onExpired(expired);
  }
}

/** The first 8 characters of a correlation id: enough to tell calls apart in a trace. */
function short(correlationId: unknown): string {
  return typeof correlationId === "string" ? correlationId.slice(0, 8) : "(none)";
}

/** Throws a RangeError unless the timeout is a positive whole number of ms. */
function checkTimeout(timeout: number): number {
  if (!Number.isSafeInteger(timeout) || timeout < 1) {
    throw new RangeError(`timeout must be a positive whole number of ms, got ${timeout}`);
  }
  return timeout;
}

// ─── Part 3: the command line ──────────────────────────────────────────────

const USAGE = `Usage: deno run -A rpc_client.ts [options] N [N ...]

Asks an RPC server for fib(N); several N are sent at once over one callback queue.

Options:
  --url URL        broker URL; give it once per cluster node to fail over
                   between them (default: $AMQP_URL, commas between URLs,
                   else amqp://localhost)
  --queue NAME     the server's request queue (default: rpc_queue)
  --timeout MS     deadline of each call in ms (default: ${DEFAULT_TIMEOUT_MS})
  --retry          if the connection drops, send again once reconnected
                   (within the deadline) instead of failing at once
  --reply-queue Q  "exclusive" (the tutorial's callback queue, default) or
                   "direct" (RabbitMQ's direct reply-to)
  --verbose        show each request, how each reply is matched to it, and
                   which broker the client is on
  -h, --help       show this help

Exit status: 0 if every call was answered, 1 if one failed or no broker
answers (or --allow-net is missing), 2 for a usage error, 130 on Ctrl-C.`;

interface CommandLine {
  numbers: number[];
  options: ClientOptions;
}

/** Parses the command line; throws a one-line message on bad input. */
function parseCommandLine(args: string[]): CommandLine | "help" {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        url: { type: "string", multiple: true },
        queue: { type: "string" },
        timeout: { type: "string" },
        retry: { type: "boolean" },
        "reply-queue": { type: "string" },
        verbose: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    throw commandLineError(error, args);
  }
  const { values, positionals } = parsed;
  if (values.help) return "help";
  if (positionals.length === 0) throw new Error("give at least one number, e.g. rpc_client.ts 30");
  const numbers = positionals.map((text) => {
    if (!/^\d+$/.test(text)) {
      throw new Error(`n must be a non-negative integer, got "${hidePassword(text)}"`);
    }
    if (!Number.isSafeInteger(Number(text))) {
      throw new Error(`n is too large: ${text} (the server computes fib(n) up to n = 10000)`);
    }
    return Number(text);
  });
  const timeout = values.timeout ?? String(DEFAULT_TIMEOUT_MS);
  if (!/^\d+$/.test(timeout) || !Number.isSafeInteger(Number(timeout)) || Number(timeout) < 1) {
    throw new Error(
      `--timeout must be a positive whole number of ms, got "${hidePassword(timeout)}"`,
    );
  }
  const replyQueue = values["reply-queue"] ?? "exclusive";
  if (replyQueue !== "direct" && replyQueue !== "exclusive") {
    throw new Error(
      `--reply-queue must be "exclusive" or "direct", got "${hidePassword(replyQueue)}"`,
    );
  }
  if (values.queue === "") throw new Error("--queue must not be empty");
  const urls = values.url
    ? parseBrokerUrls(values.url, "--url")
    : parseBrokerUrls(Deno.env.get("AMQP_URL") ?? "amqp://localhost", "AMQP_URL");
  return {
    numbers,
    options: {
      url: urls.map((url) => url.href),
      queue: values.queue,
      timeout: Number(timeout),
      retry: values.retry ?? false,
      replyQueue,
      // A one-shot call says what went wrong in its last line; --verbose
      // also shows each request, each reply, and the broker it is on.
      trace: values.verbose ? (line: string) => console.error(line) : undefined,
      log: values.verbose ? (line: string) => console.error(line) : undefined,
    },
  };
}

/** Without a server the requests would just wait in the queue: say so now, not at the deadline. */
async function warnIfNoServer(client: FibonacciRpcClient, timeout: number): Promise<void> {
  const count = await client.consumerCount().catch(ignoreError);
  if (count === 0 && client.pendingCalls > 0) {
    console.error(
      ` [!] No server is consuming "${client.queue}"; waiting up to ${timeout} ms for one ` +
        `(start it: deno run -A rpc_server.ts)`,
    );
  }
}

async function main(args: string[]): Promise<void> {
  let commandLine;
  try {
    commandLine = parseCommandLine(args);
  } catch (error) {
    const usage = error instanceof Deno.errors.NotCapable ? "" : " (see --help)";
    console.error(`rpc_client: ${(error as Error).message}${usage}`);
    Deno.exit(usage ? 2 : 1);
  }
  if (commandLine === "help") {
    console.log(USAGE);
    Deno.exit(0);
  }
  const { numbers, options } = commandLine;
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
  const calls = numbers.map((n) => {
    console.log(` [x] Requesting fib(${n})`);
    return client.call(n);
  });
  warnIfNoServer(client, options.timeout ?? DEFAULT_TIMEOUT_MS);
  const outcomes = await Promise.allSettled(calls);
  await client.close();
  if (interrupted) Deno.exit(130);
  for (const [i, outcome] of outcomes.entries()) {
    if (outcome.status === "fulfilled") {
      console.log(` [.] Got ${outcome.value}`);
    } else {
      const error = outcome.reason as Error;
      const remote = error instanceof RpcError && error.code === "remote";
      console.error(
        `rpc_client: ${remote ? `fib(${numbers[i]}): the server answered: ` : ""}${error.message}`,
      );
    }
  }
  Deno.exit(outcomes.every((outcome) => outcome.status === "fulfilled") ? 0 : 1);
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
