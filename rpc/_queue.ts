/**
 * Declaring a server's request queue, as today's tutorials do, or using
 * the one that exists.
 *
 * @module
 */
import type { Channel, ChannelModel } from "npm:amqplib@2.3.1";
import { ignoreError } from "./_connection.ts";
import type { RateLimitedLog } from "./_log.ts";

/**
 * Declares `queue` on a new channel of `model`: durable and quorum (as
 * every official tutorial server declares it since 2026-03) or non-durable
 * classic (as older copies and amqplib's bundled examples do), and returns
 * the channel.
 *
 * @example
 * ```ts
 * import amqp from "npm:amqplib@2.3.1";
 * import { RateLimitedLog } from "./_log.ts";
 *
 * const model = await amqp.connect("amqp://localhost");
 * const channel = await declareQueue(model, "rpc_queue", "quorum", new RateLimitedLog(console.log));
 * ```
 */
export async function declareQueue(
  model: ChannelModel,
  queue: string,
  queueType: "quorum" | "classic",
  log: RateLimitedLog,
): Promise<Channel> {
  const channel = await model.createChannel();
  channel.on("error", ignoreError); // its "close" event says it all
  try {
    await channel.assertQueue(
      queue,
      queueType === "quorum"
        ? { durable: true, arguments: { "x-queue-type": "quorum" } }
        : { durable: false },
    );
    return channel;
  } catch (error) {
    return await useExistingQueue(model, queue, queueType, log, error);
  }
}

/**
 * An existing queue with other settings: the declare fails with 406
 * PRECONDITION_FAILED (say, a classic `rpc_queue` left by an older copy of
 * the tutorial). It still delivers requests, so use it as it is; the 406
 * closed the channel, so take a new one.
 */
async function useExistingQueue(
  model: ChannelModel,
  queue: string,
  queueType: "quorum" | "classic",
  log: RateLimitedLog,
  error: unknown,
): Promise<Channel> {
  if ((error as { code?: number }).code !== 406) throw error;
  const channel = await model.createChannel();
  channel.on("error", ignoreError);
  await channel.checkQueue(queue);
  log.write(
    ` [!] Queue "${queue}" exists with other settings; using it as it is ` +
      `(to declare it ${queueType}: rabbitmqctl delete_queue ${queue})`,
  );
  return channel;
}
