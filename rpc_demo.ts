/**
 * rpc_demo.ts: tutorial six in one command (`deno task demo`).
 *
 * Starts the lesson's server in this process, makes one call, then five at once over the one
 * callback queue, and shows how each reply finds its call by `correlation_id` (the client's
 * `--verbose` lines, on stderr): a stray reply that matches no call is dropped, and a bad
 * request gets an error reply. Then it closes all.
 *
 *     deno run --allow-net --allow-env rpc_demo.ts
 *
 * It uses a queue of its own, `rpc_demo.<uuid>`, deleted at the end, so a server you run on
 * `rpc_queue` is not disturbed. Broker: `$AMQP_URL`, else amqp://localhost.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import amqp from "npm:amqplib@2.3.1";
import { startServer } from "./rpc_server.ts";
import { startClient } from "./rpc_client.ts";

const url = Deno.env.get("AMQP_URL") ?? "amqp://localhost";
const queue = `rpc_demo.${crypto.randomUUID()}`;
const step = (text: string) => console.log(`\n== ${text}`);

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

/** An answer as the demo shows it: long ones shortened, an error reply as such. */
function show(n: number, answer: bigint | Error): string {
  if (answer instanceof Error) return `  error reply: ${answer.message}`;
  const digits = String(answer);
  const shown = digits.length > 40 ? `${digits.slice(0, 20)}… (${digits.length} digits)` : digits;
  return `  fib(${n}) = ${shown}`;
}

let server: Awaited<ReturnType<typeof startServer>> | undefined;
let client: Awaited<ReturnType<typeof startClient>> | undefined;
try {
  step(`A server consumes "${queue}" (the tutorial's rpc_queue, renamed for the demo)`);
  server = await startServer(url, queue);

  step("A client declares its callback queue: exclusive, and named by the broker");
  client = await startClient(url, queue, 10_000, true);
  console.log(`  client callback queue: ${client.callbackQueue}`);

  step("One call: the request carries reply_to and a fresh correlation_id");
  console.log(show(30, await client.call(30)));

  step("Five calls at once over the one callback queue: each reply is matched by its id");
  const numbers = [90, 5, 1000, 1, 12];
  const answers = numbers.map((n) => client!.call(n));
  for (const [i, n] of numbers.entries()) console.log(show(n, await answers[i]));

  step("A stray reply (say, a duplicate after a redelivery) matches no call and is dropped");
  const { callbackQueue } = client;
  await asSomeoneElse((channel) =>
    channel.sendToQueue(callbackQueue, Buffer.from("42"), { correlationId: crypto.randomUUID() })
  );
  console.log(show(10, await client.call(10))); // its reply comes after the stray one

  step("A bad request gets an error reply (type error), and the server goes on");
  console.log(show(20_000, await client.call(20_000)));
  console.log(show(11, await client.call(11)));

  step("Closing: the client, then the server");
} catch (error) {
  console.error(`rpc_demo: ${(error as Error).message}`);
  Deno.exitCode = 1;
} finally {
  await client?.close().catch(() => {});
  await server?.close().catch(() => {});
  // Delete the demo's queue; no broker at all is reported above already.
  if (server) await asSomeoneElse((channel) => channel.deleteQueue(queue)).catch(() => {});
}
