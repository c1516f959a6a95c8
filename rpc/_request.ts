/**
 * Internal: one object per request a server takes, from its delivery to
 * its ack (or its return to the queue). It holds the channel it came on,
 * the message, where the reply goes, its trace span and its
 * {@linkcode RequestContext}, and it settles once: a later outcome (a
 * handler that finishes after its time ran out) is dropped.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import type { Channel, ConsumeMessage } from "npm:amqplib@2.3.1";
import type { RequestContext } from "./context.ts";
import { ignoreError } from "./_connection.ts";
import { MAX_TIMEOUT_MS, readDeadline, type ReceivedDeadline } from "./deadlines.ts";
import { ERROR_CODE_HEADER, type HandlerFailure, handlerFailure } from "./errors.ts";
import type { RateLimitedLog } from "./_log.ts";
import {
  type ReplyAddress,
  replyAddress,
  type ReplyProperties,
  type ReplySender,
  toBuffer,
} from "./_replies.ts";
import type { Reply, ReplyToRule } from "./options.ts";
import { type ProcessSpan, startProcessSpan } from "./_tracing.ts";

/** The reason a handler's signal aborts with at its caller's deadline. */
const deadlineReason = () => new DOMException("the caller's deadline passed", "TimeoutError");

/** What every request of one server shares. */
export interface RequestHost {
  /** The queue requests come from. */
  readonly queue: string;
  /** The server's log. */
  readonly log: RateLimitedLog;
  /** The server's reply connection. */
  readonly replies: ReplySender;
  /** Which other `reply_to` queues to answer; see `allowReplyTo`. */
  readonly allowReplyTo?: ReplyToRule;
  /** The `content_type` of results (not of error replies); see `contentType`. */
  readonly contentType?: string;
  /** Hears each reply sent: a result or an error reply. */
  answered(): void;
}

/**
 * One request, from delivery to ack.
 *
 * @example
 * ```ts
 * import type { Channel, ConsumeMessage } from "npm:amqplib@2.3.1";
 *
 * declare const host: RequestHost, channel: Channel, message: ConsumeMessage;
 * const request = new RpcRequest(host, channel, message);
 * if (request.address()) request.succeed("832040"); // replies, then acks
 * ```
 */
export class RpcRequest {
  /** The channel it came on: the only one that can ack it. */
  readonly channel: Channel;
  /** The request as delivered. */
  readonly message: ConsumeMessage;
  /** When the caller stops waiting, on this server's clock; undefined if it said nothing. */
  readonly deadline?: ReceivedDeadline;
  readonly #host: RequestHost;
  #span?: ProcessSpan;
  #address?: ReplyAddress;
  /** Made only for a request that sets a timer: most never do. */
  #timers?: ReturnType<typeof setTimeout>[];
  /** An outcome was taken (or the request abandoned): any later one is dropped. */
  #settled = false;
  /** Acked or given back. */
  #finished = false;
  #done?: PromiseWithResolvers<void>;
  // The handler's signal is made only if the handler reads it: most never do.
  #controller?: AbortController;
  #abortReason?: DOMException;
  /** An async handler runs: the signal, once made, aborts at the deadline. */
  #watching = false;

  constructor(host: RequestHost, channel: Channel, message: ConsumeMessage) {
    this.#host = host;
    this.channel = channel;
    this.message = message;
    this.deadline = readDeadline(message.properties.headers, Date.now());
  }

  /** Resolves once the request is acked or given back: its slot is free. */
  get done(): Promise<void> {
    this.#done ??= Promise.withResolvers<void>();
    if (this.#finished) this.#done.resolve();
    return this.#done.promise;
  }

  /** Starts the request's trace span, if tracing is on (at no cost if not). */
  trace(): void {
    const { properties, fields } = this.message;
    this.#span = startProcessSpan(
      this.#host.queue,
      properties.correlationId,
      properties.headers,
      fields.deliveryTag,
    );
  }

  /** Whether its caller has surely given up by now. */
  gaveUp(): boolean {
    return this.deadline !== undefined && Date.now() >= this.deadline.gaveUpAfter;
  }

  /** Acks it uncomputed: its caller gave up. */
  skip(): void {
    this.#settled = true;
    this.#span?.skip();
    this.#ack();
  }

  /** Whom to answer (see {@linkcode replyAddress}); false, with the request acked, if nobody. */
  address(): boolean {
    this.#address = replyAddress(this.message, this.#host.log, this.#host.allowReplyTo);
    if (this.#address) return true;
    this.#settled = true;
    this.#span?.end({ code: "no-reply-to", message: "no usable reply_to: nobody to answer" });
    this.#ack();
    return false;
  }

  /** What the handler knows of the request. */
  context(): RequestContext {
    if (this.#deadlinePassed()) this.#abort(deadlineReason());
    return new Context(this, this.#host.queue);
  }

  /** The handler's signal, made when first read (by {@linkcode RequestContext.signal}). */
  signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.#abortReason) this.#controller.abort(this.#abortReason);
      else if (this.#watching) this.#watchDeadline();
    }
    return this.#controller.signal;
  }

  #abort(reason: DOMException): void {
    if (this.#abortReason) return;
    this.#abortReason = reason;
    this.#controller?.abort(reason);
  }

  #deadlinePassed(): boolean {
    return this.deadline !== undefined && Date.now() >= this.deadline.deadline;
  }

  /** Runs `work` (the handler) inside the request's span, so that its own spans nest under it. */
  run<T>(work: () => T): T {
    return this.#span ? this.#span.run(work) : work();
  }

  /**
   * While an async handler works: its signal aborts at the caller's
   * deadline; at `handlerTimeout` (ms) it aborts too, and the caller gets
   * an error reply with code `handler-timeout`, the request is acked and
   * its slot freed.
   */
  watch(handlerTimeout: number | undefined): void {
    this.#watching = true;
    if (this.#controller) this.#watchDeadline();
    if (handlerTimeout !== undefined) {
      this.#after(handlerTimeout, () => this.#timedOut(handlerTimeout));
    }
  }

  #after(ms: number, then: () => void): void {
    (this.#timers ??= []).push(setTimeout(then, Math.max(0, ms)));
  }

  #watchDeadline(): void {
    if (!this.deadline || this.#abortReason) return;
    const left = this.deadline.deadline - Date.now();
    if (left <= MAX_TIMEOUT_MS) this.#after(left, () => this.#abort(deadlineReason()));
  }

  #timedOut(ms: number): void {
    if (this.#settled) return;
    const text = `the handler ran out of time (handlerTimeout ${ms} ms)`;
    this.#abort(new DOMException(text, "TimeoutError"));
    this.#host.log.write(
      ` [!] Handler timed out after ${ms} ms; a later result is dropped`,
      "refused",
    );
    this.#answer({ code: "handler-timeout", message: text });
  }

  /** The handler's result: replies with it (or, if it is no reply, with an internal error). */
  succeed(result: unknown): void {
    if (typeof result === "string" || result instanceof Uint8Array) {
      return this.#answer(toBuffer(result as Reply));
    }
    this.fail(new TypeError(`the handler returned ${typeof result}, not a reply`));
  }

  /** The handler threw `thrown` (any value): replies with what its caller may know, and logs the rest. */
  fail(thrown: unknown): void {
    if (this.#settled) return;
    const failure = handlerFailure(thrown);
    const log = this.#host.log;
    if (failure.id && this.#deadlinePassed()) {
      // Most likely the abort itself (fetch rejects with the signal's reason): not worth a stack.
      const message = "the caller's deadline passed before the handler finished";
      log.write(` [!] Handler stopped: ${message}`, "refused");
      return this.#answer({ code: "timeout", message });
    }
    if (failure.code === "bad-request") {
      log.write(` [!] Bad request: ${failure.message}`, "refused");
    } else if (failure.id) {
      log.write(` [!] Handler failed (id ${failure.id}): ${failure.detail}`, "failed");
    } else log.write(` [!] Handler refused (${failure.code}): ${failure.message}`, "refused");
    this.#answer(failure);
  }

  /**
   * Sends the reply to `reply_to`, with the request's `correlation_id`, so
   * the caller can tell which call it answers; then acks, only now: a
   * server that dies before this leaves the request to another server.
   * Error replies: `type: error`, the code in `x-error-code`, the text as body.
   */
  #answer(outcome: Buffer | HandlerFailure): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#clearTimers();
    const failed = !(outcome instanceof Uint8Array);
    const body = failed ? Buffer.from(outcome.message) : outcome;
    const properties: ReplyProperties = { correlationId: this.#address?.correlationId };
    if (failed) {
      [properties.type, properties.headers] = ["error", { [ERROR_CODE_HEADER]: outcome.code }];
    } else properties.contentType = this.#host.contentType;
    const span = failed ? { code: outcome.code, message: outcome.message } : undefined;
    const replyTo = this.#address!.replyTo;
    if (this.#host.replies.publish(replyTo, body, properties)) return this.#acked(span);
    // The reply connection is being rebuilt: the request waits for it, unacked.
    this.#host.replies.publishWhenBack(replyTo, body, properties).then((sent) => {
      if (this.#finished) return; // given back meanwhile (close)
      if (sent) return this.#acked(span);
      this.#host.log.write(" [!] No reply connection; returning the request to the queue");
      this.abandon("no reply connection", true);
    });
  }

  #acked(failure: { code: string; message: string } | undefined): void {
    this.#host.answered();
    this.#ack();
    this.#span?.end(failure);
  }

  /**
   * Gives up on it: its signal aborts with `reason`, a later outcome is
   * dropped, and its slot is free. With `giveBack`, it goes back to the
   * queue for another server; else the broker does that when the channel
   * it came on is gone.
   */
  abandon(reason: string, giveBack: boolean): void {
    if (this.#finished) return;
    this.#settled = true;
    this.#clearTimers();
    this.#abort(new DOMException(reason, "AbortError"));
    if (giveBack) this.giveBack();
    else this.#finishNow();
    this.#span?.end({ code: "requeued", message: reason });
  }

  /** Gives it back to the queue, unanswered; if the channel is gone, the broker does it anyway. */
  giveBack(): void {
    this.#settled = true;
    try {
      this.channel.nack(this.message, false, true);
    } catch (error) {
      ignoreError(error);
    }
    this.#finishNow();
  }

  /** Acks, unless the channel is gone: then the broker gives the request to another server. */
  #ack(): void {
    try {
      this.channel.ack(this.message);
    } catch {
      this.#host.log.write(
        " [!] Lost the channel before acking; the broker will redeliver the request",
      );
    }
    this.#finishNow();
  }

  #finishNow(): void {
    this.#finished = true;
    this.#clearTimers();
    this.#done?.resolve();
  }

  #clearTimers(): void {
    if (!this.#timers) return;
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers = undefined;
  }
}

/**
 * A request's {@linkcode RequestContext}: a class rather than an object
 * literal with a getter, which is slower to make, once per request.
 */
class Context implements RequestContext {
  readonly queue: string;
  readonly correlationId: string;
  readonly headers: Readonly<Record<string, unknown>>;
  readonly userId: string | undefined;
  readonly redelivered: boolean;
  readonly deadline: number | undefined;
  readonly #request: RpcRequest;

  constructor(request: RpcRequest, queue: string) {
    const { properties, fields } = request.message;
    this.#request = request;
    this.queue = queue;
    this.correlationId = String(properties.correlationId);
    this.headers = properties.headers ?? {};
    this.userId = typeof properties.userId === "string" ? properties.userId : undefined;
    this.redelivered = fields.redelivered;
    this.deadline = request.deadline?.deadline;
  }

  get signal(): AbortSignal {
    return this.#request.signal();
  }
}
