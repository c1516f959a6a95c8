/**
 * # bench/raw.ts: the raw amqplib pair that `rpc_bench.ts` measures ours against
 *
 * The same publish/consume/reply loop as tutorial six, written straight against
 * amqplib with no validation, logging, timers, deadlines or bookkeeping beyond
 * the map that matches replies to calls. Each AMQP feature our pair uses can be
 * switched on alone, so the benchmark can print what each one costs:
 *
 * - client `confirms`: requests go out on a confirm channel (publisher confirms);
 * - client `properties`: requests carry `mandatory`, `expiration`, the
 *   `x-deadline` and `x-timeout-ms` headers and `user_id`, as ours do;
 * - server `replyConnection`: replies go out on a second connection;
 * - `coalesce`, either side: the frames written in one task leave in one
 *   socket write, as the library's `coalesceWrites` (rpc/_connection.ts) sends
 *   them. With everything else on, this pair is ours minus our own code.
 *
 * Both sides use a callback queue declared as the tutorial does (exclusive,
 * server-named). The benchmark starts the server as its own process:
 *
 * ```sh
 * deno run -A bench/raw.ts --queue Q [--prefetch 50] [--reply-connection] [--coalesce] [--url U]
 * ```
 *
 * Permissions: `--allow-net` (the broker) and `--allow-env` (amqplib reads it);
 * `-A` grants both. It prints ` [x] Awaiting RPC requests` when consuming and
 * stops on SIGTERM or SIGINT.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import amqp from "npm:amqplib@2.3.1";
import type { Channel, ConfirmChannel, Options } from "npm:amqplib@2.3.1";

/** Which features a raw client uses. */
export interface RawClientOptions {
  url: string;
  queue: string;
  /** Publish on a confirm channel. */
  confirms: boolean;
  /** Publish with `mandatory`, `expiration`, `x-deadline` and `x-timeout-ms` headers, `user_id`. */
  properties: boolean;
  /** The deadline that `expiration` and `x-deadline` carry, in ms. */
  timeout?: number;
  /** One socket write per task instead of one per frame. */
  coalesce?: boolean;
}

/** A connected raw client: `call(n)` resolves with the reply body. */
export interface RawClient {
  call(n: number): Promise<string>;
  close(): Promise<void>;
}

/** The exact fib(n) our server computes, as a plain loop. */
function fib(n: number): bigint {
  let previous = 0n, current = 1n;
  for (let i = 0; i < n; i++) [previous, current] = [current, previous + current];
  return previous;
}

/**
 * Corks the connection's socket at the first write of a task and uncorks it
 * in a microtask: the frames of a task leave in one write.
 */
function coalesce(model: { connection: unknown }): void {
  const socket = (model.connection as { stream: import("node:net").Socket }).stream;
  const writeNow = socket.write.bind(socket) as (...args: unknown[]) => boolean;
  let scheduled = false;
  (socket as unknown as { write: typeof writeNow }).write = (...args) => {
    if (!scheduled) {
      scheduled = true;
      socket.cork();
      queueMicrotask(() => {
        scheduled = false;
        socket.uncork();
      });
    }
    return writeNow(...args);
  };
}

/** Connects a raw client with the chosen features. */
export async function rawClient(options: RawClientOptions): Promise<RawClient> {
  const { queue, confirms, properties } = options;
  const timeout = options.timeout ?? 30_000;
  // The user it logs in as (amqplib's default: guest), sent as `user_id` as ours is.
  const user = decodeURIComponent(new URL(options.url).username) || "guest";
  const connection = await amqp.connect(options.url, { noDelay: true });
  if (options.coalesce) coalesce(connection);
  const channel: Channel | ConfirmChannel = confirms
    ? await connection.createConfirmChannel()
    : await connection.createChannel();
  const { queue: replyTo } = await channel.assertQueue("", { exclusive: true });
  const pending = new Map<string, (body: string) => void>();
  await channel.consume(replyTo, (message) => {
    const resolve = message && pending.get(message.properties.correlationId);
    if (!resolve) return;
    pending.delete(message.properties.correlationId);
    resolve(message.content.toString());
  }, { noAck: true });
  const call = (n: number) =>
    new Promise<string>((resolve, reject) => {
      const correlationId = crypto.randomUUID();
      pending.set(correlationId, resolve);
      const publish: Options.Publish = properties
        ? {
          correlationId,
          replyTo,
          mandatory: true,
          expiration: String(timeout),
          headers: { "x-deadline": Date.now() + timeout, "x-timeout-ms": timeout },
          userId: user,
        }
        : { correlationId, replyTo };
      const body = Buffer.from(String(n));
      if (!confirms) {
        channel.sendToQueue(queue, body, publish);
      } else {
        (channel as ConfirmChannel).sendToQueue(queue, body, publish, (error) => {
          if (error && pending.delete(correlationId)) reject(new Error("request nacked"));
        });
      }
    });
  return { call, close: () => connection.close() };
}

/**
 * Consumes `queue`, replies fib(n), acks; replies on a second connection,
 * and coalesces writes, if asked.
 */
export async function rawServer(options: {
  url: string;
  queue: string;
  prefetch: number;
  replyConnection: boolean;
  coalesce?: boolean;
}): Promise<{ close(): Promise<void> }> {
  const connection = await amqp.connect(options.url, { noDelay: true });
  const replies = options.replyConnection
    ? await amqp.connect(options.url, { noDelay: true })
    : connection;
  for (const model of new Set([connection, replies])) {
    if (options.coalesce) coalesce(model);
    model.on("error", (error: Error) => {
      console.error(`raw.ts: lost the broker: ${error.message}`);
      Deno.exit(1);
    });
  }
  const channel = await connection.createChannel();
  const replyChannel = options.replyConnection ? await replies.createChannel() : channel;
  await channel.prefetch(options.prefetch);
  await channel.consume(options.queue, (message) => {
    if (!message) return;
    const { replyTo, correlationId } = message.properties;
    const body = Buffer.from(String(fib(Number(message.content.toString()))));
    replyChannel.sendToQueue(replyTo, body, { correlationId });
    channel.ack(message);
  });
  return {
    async close() {
      await channel.close().catch(() => {});
      if (replies !== connection) await replies.close().catch(() => {});
      await connection.close().catch(() => {});
    },
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      url: { type: "string", default: Deno.env.get("AMQP_URL") ?? "amqp://127.0.0.1" },
      queue: { type: "string" },
      prefetch: { type: "string", default: "50" },
      "reply-connection": { type: "boolean", default: false },
      coalesce: { type: "boolean", default: false },
    },
  });
  if (!values.queue) {
    console.error("raw.ts: --queue is required");
    Deno.exit(2);
  }
  const server = await rawServer({
    url: values.url,
    queue: values.queue,
    prefetch: Number(values.prefetch),
    replyConnection: values["reply-connection"],
    coalesce: values.coalesce,
  });
  console.log(" [x] Awaiting RPC requests");
  const stop = () => server.close().finally(() => Deno.exit(0));
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
}
