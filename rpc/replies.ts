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
import { ignoreError, openConnection, within } from "./connection.ts";
import { BadRequestError } from "./errors.ts";
import type { RateLimitedLog } from "./log.ts";
import type { TlsOptions } from "./_tls.ts";
import type { ProcessSpan } from "./tracing.ts";

/** How long a finished request waits for a lost reply connection to come back, in ms. */
const REPLY_WAIT_MS = 5_000;

/** What a handler may return: the reply's body, as bytes or as text (sent as UTF-8). */
export type Reply = Uint8Array | string;

/** Where a reply goes: the request's `reply_to` and `correlation_id`; and the request's span, with tracing on. */
export type ReplyAddress = { replyTo: string; correlationId: string; span?: ProcessSpan };

/** The properties of a reply: the request's correlation id, and `type: "error"` for an error reply. */
export type ReplyProperties = { correlationId?: string; type?: string; contentType?: string };

/**
 * A server's reply connection and its channel, rebuilt by itself when lost.
 *
 * @example
 * ```ts
 * const replies = await ReplySender.open(urls, "my server replies", new RateLimitedLog(console.log));
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

/** An error reply's body: the error's message; the log says whose fault it was. */
export function describeRefusal(error: unknown, log: RateLimitedLog): string {
  const text = error instanceof Error ? error.message : String(error);
  const what = error instanceof BadRequestError ? "Bad request" : "Handler failed";
  log.write(` [!] ${what}: ${text}`, "refused");
  return text;
}

/**
 * Who to answer, if anyone. A request without `reply_to` has nobody to
 * answer. AMQP's `reply_to` and `correlation_id` are raw bytes, which
 * amqplib reads as UTF-8 text, replacing what is not (with U+FFFD): such a
 * reply would go to the wrong queue or carry an id its caller never sent,
 * so it is not sent. Either way the request is acked, with a log line.
 */
export function replyAddress(
  message: ConsumeMessage,
  log: RateLimitedLog,
  span?: ProcessSpan,
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
  return { replyTo, correlationId, span };
}
