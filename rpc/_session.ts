/**
 * A client's channels on one connection: the one that consumes replies,
 * and the one requests are published on, with publisher confirms.
 *
 * @module
 */
import type { Buffer } from "node:buffer";
import type {
  ChannelModel,
  ConfirmChannel,
  ConsumeMessage,
  Message,
  Options,
} from "npm:amqplib@2.3.1";
import { type Backoff, backoffDelay } from "./_backoff.ts";
import { ignoreError } from "./_connection.ts";

/** RabbitMQ's direct reply-to pseudo-queue: replies come straight to the consuming channel. */
const DIRECT_REPLY_TO = "amq.rabbitmq.reply-to";

/** Refusals in a row, with no request taken between them, after which requests go out on a fresh channel. */
const REFUSALS_BEFORE_NEW_CHANNEL = 3;
/**
 * The least time between two fresh publishing channels: 1 s, doubling
 * (up to 30 s) while the fresh ones are refused too (a full queue).
 */
const NEW_CHANNEL_BACKOFF: Backoff = { first: 1_000, max: 30_000, jitter: 0 };

/** What a session tells its client. */
export interface SessionEvents {
  /** A reply, or null when the broker cancels the consumer. */
  onReply(message: ConsumeMessage | null): void;
  /** A `mandatory` request that no queue took. */
  onReturn(message: Message): void;
  /** A channel of the session closed under it: the connection is to be rebuilt. */
  onClosed(session: Session): void;
}

/**
 * The channels of one connection. Requests go out on a confirm channel, so
 * the broker says whether it took each one. Replies come in on the first
 * channel: the tutorial's exclusive, server-named callback queue (the
 * broker deletes it when the connection ends), or direct reply-to, which
 * needs no queue but must be consumed on the channel that publishes.
 *
 * @example
 * ```ts
 * import amqp from "npm:amqplib@2.3.1";
 * import { Buffer } from "node:buffer";
 * const model = await amqp.connect("amqp://localhost");
 * const events = { onReply: console.log, onReturn: console.log, onClosed: console.log };
 * const session = await Session.open(model, "exclusive", events);
 * const deadline = Date.now() + 5_000;
 * session.publish("rpc_queue", Buffer.from("30"), { replyTo: session.callbackQueue }, deadline, console.log);
 * ```
 */
export class Session {
  /** The queue replies come to: what requests carry as `reply_to`. */
  readonly callbackQueue: string;
  readonly #model: ChannelModel;
  readonly #replyQueue: "exclusive" | "direct";
  readonly #events: SessionEvents;
  /** The first channel: it consumes the replies. */
  readonly #first: ConfirmChannel;
  #publisher: ConfirmChannel;
  /** The latest deadline of the requests sent on the current publisher (ms since 1970). */
  #lastDeadline = 0;
  /** Channels that publish no more, closed by us; their "close" means nothing. */
  readonly #retired = new WeakSet<ConfirmChannel>();
  #refusalsInARow = 0;
  /** Fresh publishing channels in a row with no request taken in between. */
  #freshInARow = 0;
  #publisherSince = Date.now();
  #replacing = false;

  private constructor(
    model: ChannelModel,
    channel: ConfirmChannel,
    callbackQueue: string,
    replyQueue: "exclusive" | "direct",
    events: SessionEvents,
  ) {
    this.#model = model;
    this.#first = this.#publisher = channel;
    this.callbackQueue = callbackQueue;
    this.#replyQueue = replyQueue;
    this.#events = events;
  }

  /** Opens the first channel, declares the callback queue if it is ours, and consumes it. */
  static async open(
    model: ChannelModel,
    replyQueue: "exclusive" | "direct",
    events: SessionEvents,
  ): Promise<Session> {
    const channel = await model.createConfirmChannel();
    const callbackQueue = replyQueue === "exclusive"
      ? (await channel.assertQueue("", { exclusive: true })).queue
      : DIRECT_REPLY_TO;
    const session = new Session(model, channel, callbackQueue, replyQueue, events);
    await session.#listen(channel, true);
    return session;
  }

  /** A channel's listeners, and (for the first, or with direct reply-to) its reply consumer. */
  async #listen(channel: ConfirmChannel, consume: boolean): Promise<void> {
    channel.on("error", ignoreError); // its "close" event says it all
    channel.on("return", (message: Message) => this.#events.onReturn(message));
    channel.on("close", () => {
      if (!this.#retired.has(channel)) this.#events.onClosed(this);
    });
    // Replies are not acked (noAck): a lost reply is a call that times out.
    if (consume) {
      await channel.consume(this.callbackQueue, (m) => this.#events.onReply(m), { noAck: true });
    }
  }

  /**
   * Publishes a request whose caller waits until `deadline`; `confirm` hears the broker's answer: nothing if
   * it took the request, the reason if it refused it (or the channel closed).
   *
   * @throws if the channel is closing (its "close" is on the way).
   */
  publish(
    queue: string,
    body: Buffer,
    options: Options.Publish,
    deadline: number,
    confirm: (refusal: Error | undefined) => void,
  ): void {
    const channel = this.#publisher;
    if (deadline > this.#lastDeadline) this.#lastDeadline = deadline;
    channel.sendToQueue(queue, body, options, (error) => {
      if (!error) {
        if (channel === this.#publisher) this.#refusalsInARow = this.#freshInARow = 0;
        return confirm(undefined);
      }
      if (error.message !== "channel closed" && channel === this.#publisher) this.#refused();
      confirm(error);
    });
  }

  /**
   * The broker refused a request (a nack): the queue is full, or, on
   * RabbitMQ 3.10, a quorum queue had no leader when this channel first
   * published to it, just after a cluster node died, and then the broker
   * refuses every later publish on this channel. A fresh channel cures
   * that; a full queue it does not, so a fresh one is taken only after a
   * few refusals in a row, at most once a second (backing off while the
   * fresh ones are refused too), and the calls in flight lose nothing:
   * replies still come to the same place.
   */
  #refused(): void {
    this.#refusalsInARow++;
    if (this.#refusalsInARow < REFUSALS_BEFORE_NEW_CHANNEL || this.#replacing) return;
    const keepFor = backoffDelay(this.#freshInARow + 1, NEW_CHANNEL_BACKOFF);
    if (Date.now() - this.#publisherSince < keepFor) return;
    this.#replacing = true;
    this.#newPublisher().catch(ignoreError).finally(() => this.#replacing = false);
  }

  async #newPublisher(): Promise<void> {
    const channel = await this.#model.createConfirmChannel();
    // Direct reply-to answers on the channel that published: the new one
    // consumes too, and the old one goes on consuming for its calls.
    await this.#listen(channel, this.#replyQueue === "direct");
    const [old, lastDeadline] = [this.#publisher, this.#lastDeadline];
    [this.#publisher, this.#publisherSince, this.#refusalsInARow] = [channel, Date.now(), 0];
    this.#freshInARow++;
    this.#lastDeadline = 0;
    if (old === this.#first) return; // it consumes the replies
    if (this.#replyQueue === "exclusive") return this.#retire(old);
    // Direct reply-to: its replies come until its last call's deadline.
    const timer = setTimeout(
      () => this.#retire(old),
      Math.max(0, lastDeadline - Date.now()) + 1_000,
    );
    Deno.unrefTimer(timer);
  }

  /** Closes a channel that publishes no more, once the broker has confirmed what it sent. */
  #retire(channel: ConfirmChannel): void {
    this.#retired.add(channel);
    channel.waitForConfirms().catch(ignoreError).finally(() => channel.close().catch(ignoreError));
  }
}
