/**
 * The options of servers, clients and calls, with their defaults.
 *
 * @module
 */
import type { TlsOptions } from "./_tls.ts";
export type { TlsOptions } from "./_tls.ts";
import type { RequestContext } from "./context.ts";

/** What a handler may return: the reply's body, as bytes or as text (sent as UTF-8). */
export type Reply = Uint8Array | string;

/**
 * Which `reply_to` queues a server answers besides the broker-named ones:
 * a pattern, or a function that says yes or no. A request whose `reply_to`
 * fits neither is dropped with a log line: nothing is sent to it.
 */
export type ReplyToRule = RegExp | ((replyTo: string) => boolean);

/**
 * Computes the reply to one request, from the request's bytes and its
 * {@linkcode RequestContext}. It may be async. If it throws, the caller
 * gets an error reply.
 */
export type Handler = (request: Uint8Array, context: RequestContext) => Reply | Promise<Reply>;

/**
 * Requests the broker hands one server before it has acked any: the
 * `prefetch` default. The tutorial uses 1, which is fairest for slow work
 * but leaves a server idle for a round trip after every reply (about 5x
 * fewer calls/s here). For fast handlers 50 held requests delay nobody
 * much; use 1 for slow handlers (bench/README.md has the figures).
 */
export const DEFAULT_PREFETCH = 50;

/**
 * How long `close()` waits for running handlers before it aborts their
 * signals, gives their requests back to the queue and returns, in ms:
 * well inside the 10 s `docker stop` and the 30 s Kubernetes allow a
 * process between SIGTERM and SIGKILL.
 */
export const DEFAULT_CLOSE_TIMEOUT_MS = 5_000;

/** Options for {@linkcode RpcServer.start}. Every field but `queue` and `handler` has a default. */
export interface ServerOptions {
  /** The request queue. */
  queue: string;
  /** Computes each reply. */
  handler: Handler;
  /**
   * Broker URL, or several (the nodes of a cluster): the server uses the
   * first that answers and moves on to the next when it loses one.
   * Default: `$AMQP_URL` (commas between URLs), else `amqp://localhost`.
   */
  url?: string | string[];
  /**
   * TLS for `amqps://` URLs: a private CA, a client certificate and key
   * (mutual TLS), as PEM text; with `?auth_mechanism=external` in the
   * URL, the client certificate is the login (SASL EXTERNAL).
   * Default: the system's CAs, no client certificate.
   */
  tls?: TlsOptions;
  /**
   * Requests the broker may hand over before the first is acked. Default:
   * {@linkcode DEFAULT_PREFETCH}, or `concurrency` if that is larger. A
   * `prefetch` set below `concurrency` is a RangeError: the extra handlers
   * could never run.
   */
  prefetch?: number;
  /**
   * How many handlers may run at once (async handlers: a handler that
   * computes without awaiting holds the event loop whatever this says).
   * Replies and acks go out in whatever order handlers finish. Default:
   * `prefetch`, as amqplib's own consumers, rabbitmq-client and MassTransit
   * do: every request the broker hands over is worked on; use 1 for a
   * handler that must not run twice at once.
   */
  concurrency?: number;
  /**
   * A handler's time limit, in ms. At that time its `signal` aborts, its
   * caller gets an error reply with code `"handler-timeout"`, its request
   * is acked and its slot freed for the next request; whatever it returns
   * later is dropped. Only an async handler can be timed out: one that
   * computes without awaiting holds the event loop until it returns.
   * Default: none (the signal still aborts at the caller's deadline).
   */
  handlerTimeout?: number;
  /**
   * How long `close()` waits for running handlers, in ms, before it aborts
   * their signals and gives their requests back to the queue. Default:
   * {@linkcode DEFAULT_CLOSE_TIMEOUT_MS} (5 s).
   */
  closeTimeout?: number;
  /**
   * Other `reply_to` queues to answer, besides the broker-named callback
   * queues (`amq.gen-…`, `amq.rabbitmq.reply-to.…`) that every tutorial
   * client uses: a pattern, or a function saying yes or no. A request whose
   * `reply_to` names any other queue is acked unanswered, with a log line,
   * so that no caller can make the server write into another service's
   * queue. Default: none (only broker-named queues).
   */
  allowReplyTo?: ReplyToRule;
  /**
   * How to declare the queue if it does not exist yet. `"quorum"` (default):
   * durable and replicated, as every official tutorial server declares it
   * since 2026-03-16. `"classic"`: non-durable classic, as older copies of
   * the tutorials and amqplib's bundled examples declare it. A queue that
   * exists already is used as it is either way.
   */
  queueType?: "quorum" | "classic";
  /**
   * Skip requests whose caller has given up: a request taken after its
   * deadline is acked without being computed. The deadline is the
   * `x-timeout-ms` our client sends, counted on this server's clock from
   * receipt; from older clients, their `x-deadline` plus
   * `DEADLINE_GRACE_MS` (see rpc/deadlines.ts). Default: `true`. Requests
   * without either header are always computed.
   */
  skipLate?: boolean;
  /** Where log lines go. Default: `console.log`; `null` silences them. */
  log?: ((line: string) => void) | null;
  /**
   * The text of each request's log line, ` [.] <text>`, built only when the
   * line is shown; `undefined` writes none. Default: `request of N bytes`.
   */
  describe?: (request: Uint8Array) => string | undefined;
  /** The `content_type` of its replies (not of error replies). Default: none. */
  contentType?: string;
}

/** The deadline of a call when neither the client nor the call sets one, in ms. */
export const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * The largest reply accepted, in bytes, unless `maxReplyBytes` says
 * otherwise. Reading a huge reply would stall the client (10 MiB of
 * digits: seconds), and a reply that large is seldom an answer.
 */
export const DEFAULT_MAX_REPLY_BYTES = 64 * 1024;

/** Options for {@linkcode RpcClient.connect}. Every field has a default. */
export interface ClientOptions {
  /**
   * Broker URL, or several (the nodes of a cluster): the client uses the
   * first that answers and moves on to the next when it loses one.
   * Default: `$AMQP_URL` (commas between URLs), else `amqp://localhost`.
   */
  url?: string | string[];
  /**
   * TLS for `amqps://` URLs: a private CA, a client certificate and key
   * (mutual TLS), as PEM text; with `?auth_mechanism=external` in the
   * URL, the client certificate is the login (SASL EXTERNAL).
   * Default: the system's CAs, no client certificate.
   */
  tls?: TlsOptions;
  /** Deadline of each call in ms, unless the call sets its own. Default: {@linkcode DEFAULT_TIMEOUT_MS} (30 s). */
  timeout?: number;
  /**
   * Where replies come back. `"exclusive"` (default): the tutorial's
   * exclusive, server-named callback queue, declared on every connection.
   * `"direct"`: RabbitMQ's direct reply-to, which needs no queue (on a
   * cluster, see rpc/README.md: a reply to a caller whose node died can
   * crash the replying server's connection on RabbitMQ 3.10).
   */
  replyQueue?: "exclusive" | "direct";
  /**
   * When the connection drops, keep calls in flight waiting and send them
   * again once reconnected, within their own deadline, instead of failing
   * them at once with `connection-lost`. Default: `false` (fail fast). Only
   * for idempotent work. A call can override it.
   */
  retry?: boolean;
  /** Replies larger than this many bytes fail with `bad-reply`, unread. Default: {@linkcode DEFAULT_MAX_REPLY_BYTES}. */
  maxReplyBytes?: number;
  /** Hears a line for every request sent and reply received (how replies match calls). Default: none. */
  trace?: (line: string) => void;
  /** Hears a line when the connection is lost, and which broker it is on. Default: none. */
  log?: (line: string) => void;
}

/** Options for one {@linkcode RpcClient.call}. */
export interface CallOptions {
  /** Deadline in ms. Default: the client's `timeout`. */
  timeout?: number;
  /** Aborting it rejects the call with the signal's reason. */
  signal?: AbortSignal;
  /** Wait for a reconnection and send again. Default: the client's `retry`. */
  retry?: boolean;
  /** Names the call in error messages and traces. Default: `call to "QUEUE"`. */
  label?: string;
  /** The request's `content_type`. Default: none. */
  contentType?: string;
  /**
   * Application headers sent with the request; the handler reads them in
   * its context's `headers`. The library's own (`x-deadline`,
   * `x-timeout-ms`, trace context) take precedence. Default: none.
   */
  headers?: Readonly<Record<string, unknown>>;
}

/**
 * Checks a time in ms (`handlerTimeout`, `closeTimeout`): a whole number
 * from 1 to 2^31 - 1, the longest timer there is; undefined stays so.
 *
 * @example
 * ```ts
 * checkMs("handlerTimeout", 5_000); // 5000
 * ```
 * @throws {RangeError} for any other value.
 */
export function checkMs(name: string, ms: number | undefined): number | undefined {
  if (ms === undefined) return undefined;
  if (!Number.isSafeInteger(ms) || ms < 1 || ms > 2 ** 31 - 1) {
    throw new RangeError(`${name} must be a whole number of ms from 1 to 2147483647, got ${ms}`);
  }
  return ms;
}

/** The prefetch counts AMQP allows (0, "no limit", is not one we take). */
export const PREFETCH_RULE = "an integer from 1 to 65535";

/**
 * Whether `prefetch` is a count the server takes: {@linkcode PREFETCH_RULE}.
 *
 * @example
 * ```ts
 * isPrefetch(50); // true
 * ```
 */
export function isPrefetch(prefetch: number): boolean {
  return Number.isInteger(prefetch) && prefetch >= 1 && prefetch <= 65535;
}
