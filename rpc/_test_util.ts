/**
 * Fixtures shared by the rpc/ tests: a broker connection of the test's own
 * with fresh queues, a server and client pair, handlers that hold or slow
 * requests. Beside it: _test_process.ts (the command lines run as a user
 * runs them), _test_faults.ts (rabbitmqctl, TCP proxies that cut or count, a
 * silent port), _test_cluster.ts (the cluster test's helpers) and
 * _test_otlp.ts (a trace receiver).
 *
 * Every test runs against a real RabbitMQ broker (`$AMQP_URL`, else
 * amqp://localhost), on queues of its own (`rpc_test.<uuid>`) that it
 * deletes, so it never meets another test or a running server.
 *
 * @module
 */
import amqp from "npm:amqplib@2.3.1";
import type { Channel, ChannelModel, Message } from "npm:amqplib@2.3.1";
import {
  fib,
  type FibonacciClientOptions,
  FibonacciRpcClient,
  FibonacciRpcServer,
  type FibonacciServerOptions,
  type Handler,
  RpcServer,
  type ServerOptions,
} from "./mod.ts";

/** The broker every test uses: `$AMQP_URL`, else amqp://localhost. */
export const BROKER_URL = Deno.env.get("AMQP_URL") ?? "amqp://localhost";

/** Server options that silence its log. */
export const quiet = { log: null };

/** Resolves after `ms`: for polling, and for tests about time passing (each says why). */
export const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until `condition` holds; fails the test after `timeout` ms. */
export async function waitFor(
  what: string,
  condition: () => boolean | Promise<boolean>,
  timeout = 10_000,
) {
  const deadline = Date.now() + timeout;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(20);
  }
}

/** A URL as the programs print it: its password replaced by `***`. */
export function shown(url: string) {
  const copy = new URL(url);
  if (copy.password) copy.password = "***";
  return copy.href;
}

/** The tests' broker URL with `password` (and user guest, unless it names one) in it. */
export function withPassword(password: string) {
  const url = new URL(BROKER_URL);
  url.username ||= "guest";
  url.password = password;
  return url.href;
}

/** The tests' broker URL with its password written out: its own, else guest's. */
export const URL_WITH_PASSWORD = new URL(BROKER_URL).password ? BROKER_URL : withPassword("guest");

/** Options of a durable quorum queue, as the server declares it by default. */
export const QUORUM_QUEUE = { durable: true, arguments: { "x-queue-type": "quorum" } };

/** A fresh queue name of the tests' own. */
export const testQueue = () => `rpc_test.${crypto.randomUUID()}`;

/** A broker connection of the test's own, naming fresh queues; disposing it deletes them all. */
export async function openBroker() {
  const connection: ChannelModel = await amqp.connect(BROKER_URL);
  const channel: Channel = await connection.createChannel();
  channel.on("error", () => {});
  const queues: string[] = [];
  const newQueue = () => {
    const queue = testQueue();
    queues.push(queue);
    return queue;
  };
  /** Runs `work` on a channel of its own, for checks whose failure closes the channel. */
  async function withChannel<T>(work: (channel: Channel) => Promise<T>): Promise<T> {
    const own = await connection.createChannel();
    own.on("error", () => {});
    try {
      return await work(own);
    } finally {
      await own.close().catch(() => {});
    }
  }
  return {
    connection,
    channel,
    queue: newQueue(),
    newQueue,
    withChannel,
    /** Messages ready in a queue (not counting unacked ones). */
    async messageCount(queue: string) {
      return (await withChannel((own) => own.checkQueue(queue))).messageCount;
    },
    /** How many consumers a queue has. */
    async consumerCount(queue: string) {
      return (await withChannel((own) => own.checkQueue(queue))).consumerCount;
    },
    /** An exclusive reply queue and the replies it has received. */
    async replyQueue() {
      const { queue } = await channel.assertQueue("", { exclusive: true });
      const replies: Message[] = [];
      await channel.consume(queue, (message) => message && replies.push(message), { noAck: true });
      return { queue, replies };
    },
    async [Symbol.asyncDispose]() {
      try {
        await withChannel(async (own) => {
          for (const queue of queues) await own.deleteQueue(queue);
        });
      } finally {
        await connection.close();
      }
    },
  };
}

/** What {@linkcode openBroker} gives. */
export type Broker = Awaited<ReturnType<typeof openBroker>>;

/**
 * A server on a fresh queue of `broker`'s, running `handler`, its log lines
 * kept in `logged`.
 */
export async function startLoggedServer(
  broker: Broker,
  handler: Handler,
  options: Partial<ServerOptions> = {},
) {
  const logged: string[] = [];
  const server = await RpcServer.start({
    url: BROKER_URL,
    queue: broker.newQueue(),
    handler,
    log: (line) => logged.push(line),
    ...options,
  });
  return Object.assign(server, { logged });
}

/** A queue of the test's own with a server (quiet unless `log` is given) and a client on it. */
export async function startPair(
  serverOptions: Omit<FibonacciServerOptions, "queue"> = {},
  clientOptions: Omit<FibonacciClientOptions, "queue"> = {},
) {
  const broker = await openBroker();
  try {
    const server = await FibonacciRpcServer.start({
      url: BROKER_URL,
      queue: broker.queue,
      ...quiet,
      ...serverOptions,
    });
    const client = await FibonacciRpcClient.connect({
      url: BROKER_URL,
      queue: broker.queue,
      ...clientOptions,
    }).catch(async (error) => {
      await server.close();
      throw error;
    });
    return {
      broker,
      server,
      client,
      async [Symbol.asyncDispose]() {
        await client.close();
        await server.close();
        await broker[Symbol.asyncDispose]();
      },
    };
  } catch (error) {
    await broker[Symbol.asyncDispose]();
    throw error;
  }
}

/** A handler that holds each request until `release()` or disposal, so calls are in progress. */
export function heldHandler() {
  const seen: number[] = [];
  const { promise, resolve } = Promise.withResolvers<void>();
  return {
    seen,
    handler: async (n: number) => {
      seen.push(n);
      await promise;
      return fib(n);
    },
    release: () => resolve(),
    [Symbol.dispose]: () => resolve(),
  };
}

/** A handler that takes `ms` per request (for tests about slow work), noting each n in `seen`. */
export function slowHandler(ms: number, seen: number[] = []) {
  return async (n: number) => {
    seen.push(n);
    await delay(ms);
    return fib(n);
  };
}
