/**
 * # bench/rabbitmq_client.ts: the npm rabbitmq-client pair, server and client
 *
 * What a TypeScript team would pick instead of our library: npm
 * `rabbitmq-client`, used through its own RPC API. Its server is a
 * `Connection.createConsumer` on the request queue with `concurrency` and
 * `qos.prefetchCount`, answering through the `reply` function the consumer
 * hands each message; its client is `Connection.createRPCClient` (direct
 * reply-to, the only reply mechanism it has), with publisher confirms, as
 * its README's example sets it, since ours confirms every request too.
 *
 * The server does the work ours does in `bench/generic_server.ts`: it reads
 * `n` from the request and answers `fib(n)` as text, after awaiting
 * `--delay-ms` if one is given (the I/O-bound handler). `rpc_bench.ts`
 * starts it as its own process, as it starts ours:
 *
 * ```sh
 * deno run -A bench/rabbitmq_client.ts --queue Q [--prefetch 50] [--concurrency 50]
 *   [--delay-ms 0] [--queue-type quorum|classic] [--nagle] [--url U]
 * ```
 *
 * It declares the queue as ours does (quorum: durable, `x-queue-type`
 * quorum; classic: not durable), logs nothing but errors (to stderr), and
 * stops on SIGTERM or SIGINT. Its connection turns Nagle's algorithm off
 * (`noDelay: true`), as our library's do; `--nagle` leaves it on, as
 * rabbitmq-client does by default.
 *
 * Permissions: `--allow-net` and `--allow-env`; `-A` grants both.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { Connection, type ConnectionOptions } from "npm:rabbitmq-client@5.0.8";
import { DEFAULT_PREFETCH, fib } from "../rpc/mod.ts";
import { readN } from "./generic_server.ts";
import type { Call } from "./settings.ts";

/** The version the benchmark runs, as its tables name it. */
export const RABBITMQ_CLIENT = "rabbitmq-client 5.0.8";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * A message body as bytes: rabbitmq-client decodes `text/plain` bodies (its
 * own client's) to strings, and hands others (our client's) over as bytes.
 */
function bytesOf(body: unknown): Uint8Array {
  if (typeof body === "string") return encoder.encode(body);
  if (body instanceof Uint8Array) return body;
  return encoder.encode(JSON.stringify(body));
}

/**
 * Connection options for `url`. Without a user in the URL rabbitmq-client
 * logs in as nobody, where amqplib (and so our library) logs in as guest: the
 * same default is given here, so that one `--url` reaches the broker the same
 * way for both. `noDelay` turns Nagle's algorithm off, as our library does
 * (rabbitmq-client leaves it on by default).
 */
function connectionOptions(url: string, name: string, noDelay: boolean): ConnectionOptions {
  const withUser = new URL(url);
  if (withUser.username === "") {
    withUser.username = "guest";
    withUser.password = "guest";
  }
  return { url: withUser.href, connectionName: name, noDelay };
}

/** Waits until `rabbit` is connected; a failure is one line and exit 1. */
async function connected(rabbit: Connection): Promise<void> {
  try {
    await rabbit.onConnect(10_000);
  } catch (error) {
    console.error(`rabbitmq_client.ts: could not connect: ${(error as Error).message}`);
    Deno.exit(1);
  }
}

/** A connected client that can call any queue with `n` as text, and close. */
export interface Caller {
  to(queue: string): Call;
  close(): Promise<void>;
}

/**
 * Its client: one `createRPCClient` with confirms on its own connection,
 * Nagle's algorithm off (`noDelay`, as ours) or on (as shipped).
 */
export async function rabbitmqClient(url: string, noDelay: boolean): Promise<Caller> {
  const rabbit = new Connection(connectionOptions(url, "rpc_bench client", noDelay));
  rabbit.on("error", (error) => console.error(`rabbitmq-client: ${error.message}`));
  await rabbit.onConnect(10_000).catch((error) => {
    rabbit.close();
    throw new Error(`rabbitmq-client could not connect: ${error.message}`, { cause: error });
  });
  const rpc = rabbit.createRPCClient({ confirm: true, timeout: 30_000 });
  return {
    to: (queue) => async (n) => {
      const { body } = await rpc.send(queue, String(n));
      return typeof body === "string" ? body : decoder.decode(bytesOf(body));
    },
    close: async () => {
      await rpc.close();
      await rabbit.close();
    },
  };
}

/** The server's command line, as `parseArgs` reads it. */
interface ServerArgs {
  url?: string;
  queue?: string;
  prefetch?: string;
  concurrency?: string;
  "delay-ms"?: string;
  "queue-type"?: string;
  nagle?: boolean;
}

/** Its server: a consumer with `concurrency`, replying through the `reply` it is given. */
async function serve(values: ServerArgs): Promise<void> {
  const delayMs = Number(values["delay-ms"] ?? 0);
  const type = values["queue-type"] ?? "quorum";
  if (!values.queue || (type !== "quorum" && type !== "classic")) {
    console.error("rabbitmq_client.ts: --queue is required; --queue-type is quorum or classic");
    Deno.exit(2);
  }
  const url = values.url ?? Deno.env.get("AMQP_URL") ?? "amqp://127.0.0.1";
  const rabbit = new Connection(connectionOptions(url, "rpc_bench server", !values.nagle));
  rabbit.on("error", (error) => console.error(`rabbitmq-client: ${error.message}`));
  const consumer = rabbit.createConsumer({
    queue: values.queue,
    queueOptions: type === "quorum"
      ? { durable: true, arguments: { "x-queue-type": "quorum" } }
      : { durable: false },
    qos: { prefetchCount: Number(values.prefetch ?? DEFAULT_PREFETCH) },
    concurrency: Number(values.concurrency ?? 50),
    requeue: false, // a request it cannot read is dropped, not redelivered for ever
  }, async (message, reply) => {
    if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
    await reply(String(fib(readN(bytesOf(message.body)))));
  });
  consumer.on("error", (error) => console.error(`rabbitmq-client consumer: ${error.message}`));
  const stop = async () => {
    await consumer.close();
    await rabbit.close();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  await connected(rabbit);
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      url: { type: "string" },
      queue: { type: "string" },
      prefetch: { type: "string" },
      concurrency: { type: "string" },
      "delay-ms": { type: "string" },
      "queue-type": { type: "string" },
      nagle: { type: "boolean", default: false },
    },
  });
  await serve(values);
}
