/**
 * rpc_server.ts: the server of RabbitMQ's RPC tutorial (tutorial six), for Deno.
 *
 * It takes n from the queue `rpc_queue`, computes fib(n), and publishes the answer to the queue
 * the request names in `reply_to`, with the request's `correlation_id`. Start it, then
 * rpc_client.ts in another terminal:
 *
 *     deno run --allow-net --allow-env rpc_server.ts
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import amqp, { type ChannelModel } from "npm:amqplib@2.3.1";

/** The largest n we compute. fib(10000) has 2,090 digits; a bound keeps one request cheap. */
export const MAX_N = 10_000;

/** fib(n), exact: BigInt, since fib(79) outgrows a JS number; a loop, not slow recursion. */
export function fib(n: number): bigint {
  let [a, b] = [0n, 1n];
  for (let i = 0; i < n; i++) [a, b] = [b, a + b];
  return a;
}

/** Serves fib on `queue`. Resolves once it consumes; close the connection it gives to stop. */
export async function startServer(
  url: string,
  queue = "rpc_queue",
  log: (line: string) => void = console.log,
): Promise<ChannelModel> {
  // Step 1: connect to the broker (connect(), below, adds what the tutorial leaves out).
  const connection = await connect(url);
  // Step 2: open a channel. Should the broker close it, close the connection: no silent stall.
  const channel = await connection.createChannel();
  channel.on("error", () => {}).on("close", () => connection.close().catch(() => {}));
  // Step 3: declare the queue; this creates it only if it is not there yet. Durable and quorum,
  // as today's tutorials in every language declare it: declared otherwise, the broker says 406.
  await channel.assertQueue(queue, { durable: true, arguments: { "x-queue-type": "quorum" } });
  // Step 4: prefetch 1: no new request for a server until it acks the last one, so that
  // several servers share the work fairly.
  await channel.prefetch(1);
  log(" [x] Awaiting RPC requests");
  // Step 5: consume, with acks: a request that a dying server never acked goes to another.
  await channel.consume(queue, (request) => {
    if (request === null) { // the broker cancelled us: someone deleted the queue
      log(` [!] The queue ${queue} was deleted`);
      return void connection.close().catch(() => {});
    }
    const { replyTo, correlationId } = request.properties;
    let body: string;
    let type: string | undefined;
    try {
      // Step 6: compute fib(n). A bad request gets the error as its reply, marked type "error".
      const n = readN(request.content);
      log(` [.] fib(${n})`);
      body = fib(n).toString();
    } catch (error) {
      [body, type] = [(error as Error).message, "error"];
      log(` [!] Bad request: ${body}`);
    }
    try {
      // Step 7: reply to the queue in reply_to, with the request's correlation_id, so that
      // the client can tell which of its calls this answers.
      channel.sendToQueue(replyTo, Buffer.from(body), { correlationId, type });
    } catch (error) {
      log(` [!] Cannot reply: ${(error as Error).message}`); // e.g. a reply_to too long to send
    }
    // Step 8: ack, only now. Had we died before replying, the broker would hand the request
    // to another server. Acked whatever happened above: a bad request must not come back.
    channel.ack(request);
  });
  return connection;
}

/** n from a request body: decimal digits (white space around them is fine), 0 to MAX_N. */
function readN(body: Buffer): number {
  const text = body.subarray(0, 40).toString().trim();
  if (body.length <= 40 && /^\d+$/.test(text) && Number(text) <= MAX_N) return Number(text);
  const got = body.length > 40 ? `${body.length} bytes` : JSON.stringify(text);
  throw new Error(`n must be a decimal integer from 0 to ${MAX_N}, got ${got}`);
}

/** Step 1, with what the tutorial leaves out. Fails with one line that hides the password. */
async function connect(url: string): Promise<ChannelModel> {
  // noDelay: with Nagle's algorithm on, each message would wait ~40 ms for a delayed ACK.
  // timeout: a port that accepts but never speaks AMQP must not hang us.
  const connection = await amqp.connect(url, { noDelay: true, timeout: 10_000 }).catch((error) => {
    throw new Error(`cannot connect to ${hidePassword(url)}: ${why(error)}`);
  });
  connection.on("error", () => {}); // else amqplib's "error" kills us; "close" follows it
  return connection;
}

function why({ code, message }: Error & { code?: string }): string {
  if (code === "ECONNREFUSED") return "connection refused (is RabbitMQ running?)";
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") return "unknown host";
  if (message === "connect ETIMEDOUT") return "no AMQP answer within 10 s (a RabbitMQ port?)";
  if (/ACCESS.REFUSED/.test(message)) return "access refused (wrong user name or password?)";
  if (message.startsWith("Expected ConnectionOpenOk")) return "no such vhost, or no access to it";
  return message.split("\n")[0];
}

/** Text fit to print: a URL's password, or what a mistyped one has between : and @, is ***. */
function hidePassword(text: string): string {
  if (!URL.canParse(text) || !new URL(text).password) return text.replace(/:.*@/s, ":***@");
  return Object.assign(new URL(text), { password: "***" }).href;
}

const USAGE = `Usage: deno run --allow-net --allow-env rpc_server.ts [--queue NAME]
Answers fib(n) requests from the queue NAME (default: rpc_queue) on the broker
at $AMQP_URL (default: amqp://localhost). Ctrl-C stops it.`;

if (import.meta.main) {
  let stopping = false;
  try {
    const options = { queue: { type: "string" }, help: { type: "boolean", short: "h" } } as const;
    const { values: { queue, help } } = parseArgs({ args: Deno.args, options });
    if (help) {
      console.log(USAGE);
      Deno.exit(0);
    }
    if (queue === "") throw new TypeError("--queue must not be empty");
    const started = startServer(Deno.env.get("AMQP_URL") ?? "amqp://localhost", queue);
    // Ctrl-C: close the connection (requests not yet acked go back to the queue), and exit 0.
    Deno.addSignalListener("SIGINT", () => {
      stopping = true;
      started.then((connection) => connection.close()).finally(() => Deno.exit(0));
    });
    const connection = await started;
    // A lost connection: say so in one line, and exit 1.
    connection.on("close", (error?: Error) => {
      if (stopping) return;
      console.error(
        `rpc_server: the connection to the broker closed${error ? `: ${why(error)}` : ""}`,
      );
      Deno.exit(1);
    });
  } catch (error) {
    const usage = error instanceof TypeError; // a command line we do not take: exit 2
    const message = (error as Error).message.replace(/\. To specify .*/s, "");
    console.error(`rpc_server: ${usage ? `${hidePassword(message)} (see --help)` : message}`);
    Deno.exit(usage ? 2 : 1);
  }
}
