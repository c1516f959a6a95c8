/**
 * How a server sends its replies: on a connection of its own.
 *
 * A reply the broker cannot deliver can close the connection that sent it:
 * RabbitMQ 3.10 fails a reply to a direct reply-to caller that lived on a
 * cluster node that is gone with 541 INTERNAL_ERROR. On the consuming
 * connection that would redeliver every unacked request, crash again, and
 * loop; on a connection of its own it costs only a reconnection.
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
import { ignoreError, openConnection, within } from "./_connection.ts";
import type { RateLimitedLog } from "./_log.ts";
import type { TlsOptions } from "./_tls.ts";
import type { Reply, ReplyToRule } from "./options.ts";

/** How long a finished request waits for a lost reply connection to come back, in ms. */
const REPLY_WAIT_MS = 5_000;

/** Where a reply goes: the request's `reply_to` and `correlation_id`. */
export type ReplyAddress = { replyTo: string; correlationId: string };

/**
 * The properties of a reply: the request's correlation id; for an error
 * reply, `type: "error"` and the code in the `x-error-code` header.
 */
export type ReplyProperties = {
  correlationId?: string;
  type?: string;
  headers?: Record<string, string>;
  contentType?: string;
};

/**
 * Whether the broker named this queue: a server-named queue (`amq.gen-…`,
 * the tutorial's exclusive callback queue) or a direct reply-to address
 * (`amq.rabbitmq.reply-to.…`, as the broker rewrites it). Nobody can
 * declare a queue whose name starts with `amq.`, so such a `reply_to`
 * names some caller's own callback queue, never another service's work queue.
 *
 * @example
 * ```ts
 * isBrokerNamed("amq.gen-JzTY20BRgKO-HjmUJj0wLg"); // true
 * isBrokerNamed("billing.jobs"); // false
 * ```
 */
export function isBrokerNamed(replyTo: string): boolean {
  return replyTo.startsWith("amq.gen-") || replyTo.startsWith("amq.rabbitmq.reply-to.");
}

/**
 * A server's reply connection and its channel, rebuilt by itself when lost.
 *
 * @example
 * ```ts
 * import { Buffer } from "node:buffer";
 * import { RateLimitedLog } from "./_log.ts";
 *
 * const urls = [new URL("amqp://localhost")];
 * const log = new RateLimitedLog(console.log);
 * const replies = await ReplySender.open(urls, "my server replies", log, () => {});
 * replies.publish("amq.gen-...", Buffer.from("832040"), { correlationId: "..." });
 * await replies.close();
 * ```
 */
export class ReplySender {
  #connection?: RecoveringChannelModel;
  #channel?: Channel;
  /** Resolves when the next reply channel opens. */
  #channelBack = Promise.withResolvers<void>();
  #stopping = false;
  readonly #log: RateLimitedLog;

  private constructor(log: RateLimitedLog) {
    this.#log = log;
  }

  /** Connects to the first of `urls` that answers (over `tls` for amqps://); fails with one line if none does. `blocked` hears resource alarms. */
  static async open(
    urls: readonly URL[],
    name: string,
    log: RateLimitedLog,
    blocked: (reason: string | undefined) => void,
    tls?: TlsOptions,
  ): Promise<ReplySender> {
    const sender = new ReplySender(log);
    sender.#connection = await openConnection(urls, {
      name,
      setup: (model) => sender.#openChannel(model),
      log: (line) => log.write(`${line} (reply connection)`),
      blocked,
      tls,
    });
    return sender;
  }

  /** Runs on every new reply connection. A channel the broker closes takes the connection along, to be rebuilt. */
  async #openChannel(model: ChannelModel): Promise<void> {
    const channel = await model.createChannel();
    channel.on("error", ignoreError);
    channel.on("close", () => {
      if (this.#channel === channel) this.#channel = undefined;
      if (!this.#stopping) model.close().catch(ignoreError);
    });
    this.#channel = channel;
    this.#channelBack.resolve();
    this.#channelBack = Promise.withResolvers();
  }

  /** Publishes one reply; false if the reply connection is being rebuilt. */
  publish(replyTo: string, body: Buffer, properties: ReplyProperties): boolean {
    if (!this.#channel) return false;
    try {
      this.#channel.sendToQueue(replyTo, body, properties);
    } catch (error) {
      // Whatever this one request holds, it must not stall the others.
      this.#log.write(` [!] Could not reply to "${replyTo}": ${(error as Error).message}`);
    }
    return true;
  }

  /** Waits (a few seconds at most) for the reply connection to come back, then publishes; false if it did not. */
  async publishWhenBack(
    replyTo: string,
    body: Buffer,
    properties: ReplyProperties,
  ): Promise<boolean> {
    // Waiting is enough: publish() sees whether the channel came back.
    await within(this.#channelBack.promise, REPLY_WAIT_MS, "no reply channel").catch(ignoreError);
    return this.publish(replyTo, body, properties);
  }

  /**
   * Closes the channel, then the connection: a channel's close-ok comes after
   * the broker has taken every frame sent on it, while amqplib may write a
   * connection close ahead of frames still queued on a channel, and lose them.
   */
  async close(): Promise<void> {
    this.#stopping = true;
    await this.#channel?.close().catch(ignoreError);
    await this.#connection?.close().catch(ignoreError);
  }
}

/** A reply's bytes as amqplib sends them, without copying. */
export function toBuffer(reply: Reply): Buffer {
  if (typeof reply === "string") return Buffer.from(reply);
  return Buffer.from(reply.buffer, reply.byteOffset, reply.byteLength);
}

/**
 * Who to answer, if anyone. A request without `reply_to` has nobody to
 * answer. AMQP's `reply_to` and `correlation_id` are raw bytes, which
 * amqplib reads as UTF-8 text, replacing what is not (with U+FFFD): such a
 * reply would go to the wrong queue or carry an id its caller never sent,
 * so it is not sent. And `reply_to` is input, not an instruction: the
 * default exchange reaches every queue, so a request naming another
 * service's queue would have us write into it. Only broker-named callback
 * queues are answered ({@linkcode isBrokerNamed}), and those `allow` lets
 * through. Either way the request is acked, with a (rate-limited) log line.
 *
 * @example
 * ```ts
 * import type { ConsumeMessage } from "npm:amqplib@2.3.1";
 * import { RateLimitedLog } from "./_log.ts";
 *
 * declare const message: ConsumeMessage;
 * const address = replyAddress(message, new RateLimitedLog(console.log), /^replies\./);
 * ```
 */
export function replyAddress(
  message: ConsumeMessage,
  log: RateLimitedLog,
  allow?: ReplyToRule,
): ReplyAddress | undefined {
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
  if (!isBrokerNamed(replyTo) && !allowed(replyTo, allow)) {
    log.write(
      () =>
        ` [!] Dropped a request whose reply_to ${JSON.stringify(replyTo.slice(0, 100))} ` +
        "is no broker-named callback queue (see the allowReplyTo option)",
      "refused",
    );
    return undefined;
  }
  return { replyTo, correlationId };
}

/** Whether `allow` lets this `reply_to` through; a function that throws says no. */
function allowed(replyTo: string, allow: ReplyToRule | undefined): boolean {
  try {
    if (allow instanceof RegExp) return replyTo.search(allow) >= 0;
    return allow?.(replyTo) === true;
  } catch {
    return false;
  }
}
