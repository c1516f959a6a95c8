// rpc_server.ts: the server of RabbitMQ's RPC tutorial.
// It takes n from rpc_queue, computes fib(n), and sends
// the answer to the queue named in the request's reply_to:
//   deno run --allow-net --allow-env rpc_server.ts
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import amqp from "npm:amqplib@2.3.1";

// fib(n), exact: a BigInt, as fib(79) outgrows a number.
export function fib(n: number): bigint {
  let a = 0n;
  let b = 1n;
  for (let i = 0; i < n; i++) {
    const next = a + b;
    a = b;
    b = next;
  }
  return a;
}

// Serves fib on `queue`; gives back the connection.
export async function startServer(url: string, queue: string) {
  // Step 1: connect to RabbitMQ. timeout: a port that
  // never answers fails in 10 s. noDelay: send at once.
  const options = { timeout: 10_000, noDelay: true };
  const connection = await amqp.connect(url, options);
  connection.on("error", () => {}); // "close" follows
  // Step 2: open a channel. If the broker closes it, stop.
  const channel = await connection.createChannel();
  channel.on("error", (error) => {
    console.error(`rpc_server: ${error.message}`);
    Deno.exit(1);
  });
  // Step 3: declare the queue: durable and quorum, as
  // every tutorial declares it today.
  await channel.assertQueue(queue, {
    durable: true,
    arguments: { "x-queue-type": "quorum" },
  });
  // Step 4: one request at a time, so servers share work.
  await channel.prefetch(1);
  console.log(" [x] Awaiting RPC requests");

  // Step 5: take the requests; we ack each one ourselves.
  await channel.consume(queue, (request) => {
    if (request === null) {
      // The broker cancelled us: the queue was deleted.
      console.log(" [!] The queue was deleted");
      Deno.exit(1);
    }

    // Step 6: compute fib(n). A request that is not a
    // number from 0 to 10000 gets an error reply.
    const text = request.content.toString().trim();
    const n = Number(text);
    let answer = "";
    let type;
    if (/^\d{1,5}$/.test(text) && n <= 10000) {
      console.log(` [.] fib(${n})`);
      answer = fib(n).toString();
    } else {
      const got = JSON.stringify(text.slice(0, 40));
      answer = `n must be from 0 to 10000, got ${got}`;
      type = "error";
      console.log(` [!] Bad request: ${answer}`);
    }

    // Step 7: reply to reply_to, with the correlation_id.
    // But only to a callback queue the broker named, as
    // tutorial clients have: else anyone could make us
    // write into any queue.
    const replyTo = request.properties.replyTo ?? "";
    const correlationId = request.properties.correlationId;
    const isNamed = replyTo.startsWith("amq.gen-") ||
      replyTo.startsWith("amq.rabbitmq.reply-to");
    if (isNamed) {
      try {
        const content = Buffer.from(answer);
        const options = { correlationId, type };
        channel.sendToQueue(replyTo, content, options);
      } catch (error) {
        // e.g. a correlation_id too long to send back
        console.log(` [!] Cannot reply: ${error}`);
      }
    } else {
      const name = JSON.stringify(replyTo);
      console.log(` [!] No reply to ${name}: not a callback queue`);
    }

    // Step 8: ack, only now: had we died before, the
    // broker would give the request to another server.
    channel.ack(request);
  });
  return connection;
}

// ─── What the tutorial leaves out ───────────────────

// Why we could not connect, in a few words.
function why(error: { code?: string; message: string }) {
  const text = error.message;
  if (error.code === "ECONNREFUSED") return "is RabbitMQ running?";
  if (text === "connect ETIMEDOUT") return "no answer in 10 s";
  if (text.includes("ACCESS_REFUSED")) return "wrong password";
  if (text.includes("ConnectionOpenOk")) return "no such vhost";
  return text;
}

// In user:password@host, the password becomes ***.
function hidePassword(text: string) {
  const start = text.indexOf("//") + 1; // 0 if no "//"
  const colon = text.indexOf(":", start);
  const at = text.lastIndexOf("@");
  if (colon === -1 || at < colon) return text;
  return text.slice(0, colon) + ":***" + text.slice(at);
}

// Ends the program with one line; 2: a bad command line.
function exit(code: number, message: string): never {
  let line = hidePassword(message.split("\n")[0]);
  if (code === 2) line = `${line} (see --help)`;
  console.error(`rpc_server: ${line}`);
  Deno.exit(code);
}

if (import.meta.main) {
  let args;
  try {
    args = parseArgs({
      args: Deno.args,
      options: {
        queue: { type: "string", default: "rpc_queue" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    exit(2, error instanceof Error ? error.message : "");
  }
  const queue = args.values.queue;
  if (args.values.help) {
    console.log("Usage: rpc_server.ts [--queue NAME]");
    console.log("NAME: rpc_queue; the broker: $AMQP_URL.");
    Deno.exit(0);
  }
  if (queue === "") exit(2, "--queue must not be empty");
  const url = Deno.env.get("AMQP_URL") ?? "amqp://localhost";
  // Ctrl-C while still connecting: exit 0 at once.
  const quit = () => Deno.exit(0);
  Deno.addSignalListener("SIGINT", quit);
  const started = startServer(url, queue);
  const connection = await started.catch((error) => {
    return exit(1, `cannot connect to ${url}: ${why(error)}`);
  });
  Deno.removeSignalListener("SIGINT", quit);
  // A lost connection: one line, and exit 1.
  const lost = "lost the connection to the broker";
  connection.on("close", () => exit(1, lost));
  // Ctrl-C: close the connection (a request not acked
  // goes back to the queue), and exit 0.
  Deno.addSignalListener("SIGINT", async () => {
    connection.removeAllListeners("close");
    await connection.close();
    Deno.exit(0);
  });
}
