// rpc_server.ts, exercise 7 of WORKSHOP.md solved: the tutorial's server
// serving reverse(text), not fib(n). It takes a text from rpc_queue and
// sends it back reversed to the queue in the request's reply_to, with
// its correlation_id:
//     deno run --allow-net --allow-env rpc_server.ts
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import amqp from "npm:amqplib@2.3.1";

// The text backwards. [...text] splits it into characters, so that an
// emoji (two UTF-16 units) stays whole; text.split("") would cut it.
export function reverse(text: string): string {
  return [...text].reverse().join("");
}

// Serves reverse on `queue`, and gives back the connection.
export async function startServer(url: string, queue: string) {
  // Step 1: connect to RabbitMQ. noDelay: send each message at once;
  // timeout: a port that never speaks AMQP fails after 10 s.
  const options = { noDelay: true, timeout: 10_000 };
  const connection = await amqp.connect(url, options);
  connection.on("error", () => {}); // "close" follows it, below
  // Step 2: open a channel. If the broker closes it, we stop.
  const channel = await connection.createChannel();
  channel.on("error", (error) => exit(1, error.message));
  // Step 3: declare the queue: durable and quorum, as every tutorial
  // declares it today (declared otherwise, the broker refuses: 406).
  await channel.assertQueue(queue, {
    durable: true,
    arguments: { "x-queue-type": "quorum" },
  });
  // Step 4: one request at a time, so that servers share the work.
  await channel.prefetch(1);
  console.log(" [x] Awaiting RPC requests");

  // Step 5: take the requests; we ack each one ourselves.
  await channel.consume(queue, (request) => {
    // null: the broker cancelled us, because the queue was deleted.
    if (request === null) {
      console.log(" [!] The queue was deleted");
      Deno.exit(1);
    }

    // Step 6: compute reverse(text). Any text will do, up to 1000 bytes:
    // a longer one gets an error reply instead, of type "error".
    const size = request.content.length;
    let answer = "";
    let type;
    if (size <= 1000) {
      const text = request.content.toString();
      console.log(` [.] reverse(${text})`);
      answer = reverse(text);
    } else {
      answer = `text must be at most 1000 bytes, got ${size} bytes`;
      type = "error";
      console.log(` [!] Bad request: ${answer}`);
    }

    // Step 7: reply to reply_to, with the request's correlation_id. Only
    // to a queue the broker named, as every tutorial client's: else anyone
    // could make us write into any queue.
    const replyTo = request.properties.replyTo ?? "";
    const correlationId = request.properties.correlationId;
    const named = replyTo.startsWith("amq.gen-") ||
      replyTo.startsWith("amq.rabbitmq.reply-to");
    if (!named) {
      const name = JSON.stringify(replyTo);
      console.log(` [!] No reply: reply_to ${name} is not a callback queue`);
    } else {
      try {
        const options = { correlationId, type };
        channel.sendToQueue(replyTo, Buffer.from(answer), options);
      } catch (error) {
        // amqplib refuses, e.g., a correlation_id too long to send back
        console.log(` [!] Cannot reply: ${error}`);
      }
    }

    // Step 8: ack, only now: had we died before, the broker would give
    // the request to another server. A bad request, too: it must not return.
    channel.ack(request);
  });
  return connection;
}

// ─── What the tutorial leaves out ────────────────────────────────────

// Why the broker could not be reached, in a few words.
function why(error: { code?: string; message: string }) {
  const text = error.message;
  if (error.code === "ECONNREFUSED") return "refused (is RabbitMQ running?)";
  if (text === "connect ETIMEDOUT") return "no AMQP answer within 10 s";
  if (text.includes("ACCESS_REFUSED")) return "wrong user or password";
  if (text.includes("ConnectionOpenOk")) return "no access to the vhost";
  return text;
}

// Text fit to print: in user:password@host, the password becomes ***.
function hidePassword(text: string) {
  const start = text.indexOf("//") + 1; // 0 if there is no "//"
  const colon = text.indexOf(":", start);
  const at = text.lastIndexOf("@");
  if (colon === -1 || at < colon) return text;
  return text.slice(0, colon) + ":***" + text.slice(at);
}

// Ends the program with one line, password hidden. 2: a bad command line.
function exit(code: number, message: string): never {
  const hint = code === 2 ? " (see --help)" : "";
  console.error(`rpc_server: ${hidePassword(message.split("\n")[0])}${hint}`);
  Deno.exit(code);
}

const USAGE = `Usage: rpc_server.ts [--queue NAME]
Answers reverse(text) requests from the queue NAME (default: rpc_queue) on the
broker at $AMQP_URL (default: amqp://localhost). Ctrl-C stops it.
Run it with: deno run --allow-net --allow-env rpc_server.ts`;

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
    exit(2, error instanceof Error ? error.message : String(error));
  }
  const queue = args.values.queue;
  if (args.values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  if (queue === "") exit(2, "--queue must not be empty");
  const url = Deno.env.get("AMQP_URL") ?? "amqp://localhost";
  const started = startServer(url, queue);
  const connection = await started.catch((error) => {
    return exit(1, `cannot connect to ${url}: ${why(error)}`);
  });
  // A lost connection: one line, and exit 1.
  connection.on("close", () => exit(1, "lost the connection to the broker"));
  // Ctrl-C: close the connection (a request not acked yet goes back to
  // the queue, for another server), and exit 0.
  Deno.addSignalListener("SIGINT", async () => {
    connection.removeAllListeners("close");
    await connection.close();
    Deno.exit(0);
  });
}
