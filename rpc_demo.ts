/**
 * # rpc_demo.ts: tutorial six in one command
 *
 * Starts an RPC server in this process, makes one call, then five at once
 * over the same callback queue, and shows how each reply finds its call by
 * `correlation_id`, including a stray reply that matches nothing and is
 * dropped. Then it closes everything and exits.
 *
 * ```sh
 * deno task demo        # = deno run --allow-net --allow-env rpc_demo.ts
 * ```
 *
 * Permissions: `--allow-net` (the broker) and `--allow-env` (`AMQP_URL`), as
 * the scripts it imports; rpc_test.ts runs it with just those two.
 * It uses a queue of its own (`rpc_demo.<uuid>`), deleted at the end, so a
 * server you run on `rpc_queue` is not disturbed.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import amqp from "npm:amqplib@^2.3.1";
import type { Channel } from "npm:amqplib@^2.3.1";
import { RpcServer } from "./rpc_server.ts";
import { FibonacciRpcClient } from "./rpc_client.ts";

const url = Deno.env.get("AMQP_URL") ?? "amqp://localhost";
const queue = `rpc_demo.${crypto.randomUUID()}`;
const step = (text: string) => console.log(`\n== ${text}`);

/** Runs `work` on a channel of a short-lived connection of its own. */
async function withChannel(work: (channel: Channel) => unknown): Promise<void> {
  const connection = await amqp.connect(url);
  try {
    const channel = await connection.createChannel();
    await work(channel);
    // Closing the channel first waits until the broker has what we sent.
    await channel.close();
  } finally {
    await connection.close();
  }
}

try {
  step(`A server consumes "${queue}" (the tutorial's rpc_queue, renamed for the demo)`);
  await using server = await RpcServer.start({
    url,
    queue,
    log: (line) => console.log(`  server ${line}`),
  });

  step("A client declares its callback queue: the tutorial's exclusive, server-named queue");
  await using client = await FibonacciRpcClient.connect({
    url,
    queue,
    replyQueue: "exclusive", // the default; "direct" would use RabbitMQ's direct reply-to
    trace: (line) => console.log(`  client ${line}`),
  });
  console.log(`  client callback queue: ${client.callbackQueue}`);

  step("One call: the request carries reply_to and a fresh correlation_id");
  console.log(`  fib(30) = ${await client.call(30)}`);

  step("Five calls at once over the one callback queue: each reply is matched by its id");
  const numbers = [90, 5, 1000, 1, 12];
  const results = await Promise.all(numbers.map((n) => client.call(n)));
  for (const [i, n] of numbers.entries()) {
    const digits = String(results[i]);
    console.log(
      `  fib(${n}) = ${
        digits.length > 40 ? `${digits.slice(0, 20)}… (${digits.length} digits)` : digits
      }`,
    );
  }

  step("A stray reply (say, a duplicate after a redelivery) matches no call and is dropped");
  await withChannel((channel) =>
    channel.sendToQueue(client.callbackQueue, Buffer.from("42"), {
      correlationId: crypto.randomUUID(),
    })
  );
  for (let tries = 0; tries < 100 && client.droppedReplies === 0; tries++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  console.log(`  replies dropped so far: ${client.droppedReplies}`);

  step("A bad request gets an error reply, and the server goes on");
  await client.call(20_000).catch((error: Error) =>
    console.log(`  ${error.name}: ${error.message}`)
  );
  console.log(`  fib(10) = ${await client.call(10)}`);

  step("Closing: the client, then the server (it finishes what it has, acks, exits)");
  await client.close();
  await server.close();
  console.log(`  answered ${server.answered} requests`);
} catch (error) {
  console.error(`rpc_demo: ${(error as Error).message}`);
  Deno.exitCode = 1;
} finally {
  // Delete the demo's queue; a failure to here must not hide the first error.
  await withChannel((channel) => channel.deleteQueue(queue)).catch(() => {
    // the broker was not reachable in the first place
  });
}
