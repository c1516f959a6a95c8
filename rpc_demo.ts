/**
 * rpc_demo.ts: tutorial six in one command (`deno task demo`).
 *
 * Starts the lesson's server in this process, makes one call, then five at once over the one
 * callback queue, and shows how each reply finds its call by `correlation_id`: a stray reply
 * that matches no call is dropped, and a bad request gets an error reply. Then it closes all.
 *
 *     deno run --allow-net --allow-env rpc_demo.ts
 *
 * It uses a queue of its own, `rpc_demo.<uuid>`, deleted at the end, so a server you run on
 * `rpc_queue` is not disturbed. Broker: `$AMQP_URL`, else amqp://localhost.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import amqp, { type ChannelModel } from "npm:amqplib@2.3.1";
import { startServer } from "./rpc_server.ts";
import { FibonacciRpcClient } from "./rpc_client.ts";

const url = Deno.env.get("AMQP_URL") ?? "amqp://localhost";
const queue = `rpc_demo.${crypto.randomUUID()}`;
const step = (text: string) => console.log(`\n== ${text}`);
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs `work` on a channel of a short connection of its own: the demo's "someone else". */
async function asSomeoneElse(work: (channel: amqp.Channel) => unknown): Promise<void> {
  const connection = await amqp.connect(url);
  try {
    const channel = await connection.createChannel();
    await work(channel);
    await channel.close(); // closing the channel first waits until the broker has what we sent
  } finally {
    await connection.close();
  }
}

let server: ChannelModel | undefined;
let client: FibonacciRpcClient | undefined;
try {
  step(`A server consumes "${queue}" (the tutorial's rpc_queue, renamed for the demo)`);
  server = await startServer(url, queue, (line) => console.log(`  server ${line}`));

  step("A client declares its callback queue: exclusive, and named by the broker");
  const dropped: string[] = [];
  client = await FibonacciRpcClient.connect(url, {
    queue,
    trace(line) {
      console.log(`  client ${line}`);
      if (line.endsWith("dropped")) dropped.push(line);
    },
  });
  console.log(`  client callback queue: ${client.callbackQueue}`);

  step("One call: the request carries reply_to and a fresh correlation_id");
  console.log(`  fib(30) = ${await client.call(30)}`);

  step("Five calls at once over the one callback queue: each reply is matched by its id");
  const numbers = [90, 5, 1000, 1, 12];
  const results = await Promise.all(numbers.map((n) => client!.call(n)));
  for (const [i, n] of numbers.entries()) {
    const digits = String(results[i]);
    const shown = digits.length > 40 ? `${digits.slice(0, 20)}… (${digits.length} digits)` : digits;
    console.log(`  fib(${n}) = ${shown}`);
  }

  step("A stray reply (say, a duplicate after a redelivery) matches no call and is dropped");
  const { callbackQueue } = client;
  await asSomeoneElse((channel) =>
    channel.sendToQueue(callbackQueue, Buffer.from("42"), { correlationId: crypto.randomUUID() })
  );
  for (let tries = 0; tries < 100 && dropped.length === 0; tries++) await delay(20);
  console.log(`  replies dropped so far: ${dropped.length}`);

  step("A bad request gets an error reply (type error), and the server goes on");
  await client.call(20_000).catch((error: Error) => console.log(`  error reply: ${error.message}`));
  console.log(`  fib(10) = ${await client.call(10)}`);

  step("Closing: the client, then the server");
} catch (error) {
  console.error(`rpc_demo: ${(error as Error).message}`);
  Deno.exitCode = 1;
} finally {
  await client?.close();
  await server?.close().catch(() => {});
  // Delete the demo's queue; no broker at all is reported above already.
  if (server) await asSomeoneElse((channel) => channel.deleteQueue(queue)).catch(() => {});
}
