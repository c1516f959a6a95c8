// rpc_client.ts, exercise 7 of WORKSHOP.md solved: it
// asks for reverse(text) instead of fib(n), and waits:
//   deno run --allow-net --allow-env rpc_client.ts hello "Deno 🦕"
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import amqp from "npm:amqplib@2.3.1";

// Connects; gives back call(text), close(), callbackQueue.
export async function startClient(
  url: string,
  queue = "rpc_queue",
  timeout = 30_000,
  verbose = false,
) {
  // Step 1: connect to RabbitMQ, and open a channel.
  // timeout: a port that never answers fails in 10 s.
  const options = { timeout: 10_000, noDelay: true };
  const connection = await amqp.connect(url, options);
  connection.on("error", () => {}); // "close" follows
  const channel = await connection.createChannel();
  channel.on("error", () => {}); // "close" follows
  // Step 2: declare a callback queue: named by the
  // broker, ours alone, deleted when we disconnect.
  const declared = await channel.assertQueue("", { exclusive: true });
  const callbackQueue = declared.queue;
  // The calls that wait for a reply, by correlation_id.
  const calls = new Map();

  // Step 3: consume the replies. noAck: a lost one times out.
  await channel.consume(callbackQueue, (reply) => {
    if (reply === null) return; // our queue was deleted
    const correlationId = reply.properties.correlationId;
    const id = String(correlationId).slice(0, 8);
    const text = reply.content.toString();
    const call = calls.get(correlationId);
    // No call waits for it (a duplicate, a stray): drop it.
    if (call === undefined) {
      const dropped = ` [<] reply ${id}: no call waits for it, dropped`;
      if (verbose) console.error(dropped);
      return;
    }
    const asked = `reverse(${call.text})`;
    if (verbose) console.error(` [<] reply ${id}: matches ${asked}`);
    // Any text is an answer, unless of type "error".
    if (reply.properties.type !== "error") {
      settle(correlationId, text);
    } else {
      settle(correlationId, new Error(`${asked}: ${text}`));
    }
  }, { noAck: true });

  // Asks for reverse(text): gives the answer, or an Error.
  function call(text: string): Promise<string | Error> {
    const correlationId = crypto.randomUUID();
    return new Promise((resolve) => {
      // Step 4: register the call first, so that its
      // reply finds it; give up after `timeout` ms.
      const late = `reverse(${text}): no reply within ${timeout} ms`;
      const giveUp = () => settle(correlationId, new Error(late));
      const timer = setTimeout(giveUp, timeout);
      calls.set(correlationId, { text, resolve, timer });
      // Step 5: send the text with reply_to and correlation_id.
      // expiration: unless taken in time, it is dropped.
      const replyTo = callbackQueue;
      const expiration = timeout;
      const options = { replyTo, correlationId, expiration };
      channel.sendToQueue(queue, Buffer.from(text), options);
      const id = correlationId.slice(0, 8);
      const sent = ` [>] reverse(${text}), correlation_id ${id}`;
      if (verbose) console.error(`${sent}, reply_to ${replyTo}`);
    });
  }
  // Step 6: settle a call: forget it, give its answer.
  function settle(correlationId: string, answer: string | Error) {
    const call = calls.get(correlationId);
    calls.delete(correlationId);
    clearTimeout(call.timer);
    call.resolve(answer);
  }
  // A lost connection fails all calls at once.
  connection.on("close", () => {
    for (const [correlationId, call] of calls) {
      const lost = `reverse(${call.text}): lost the connection to the broker`;
      settle(correlationId, new Error(lost));
    }
  });
  // Step 7: close the connection.
  async function close() {
    await connection.close();
  }
  return { callbackQueue, call, close };
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
  console.error(`rpc_client: ${line}`);
  Deno.exit(code);
}

if (import.meta.main) {
  let args;
  try {
    args = parseArgs({
      args: Deno.args,
      allowPositionals: true,
      options: {
        queue: { type: "string", default: "rpc_queue" },
        timeout: { type: "string", default: "30000" },
        verbose: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    exit(2, error instanceof Error ? error.message : "");
  }
  const { queue, timeout, verbose, help } = args.values;
  const texts = args.positionals;
  if (help) {
    console.log("Usage: rpc_client.ts [--queue NAME]");
    console.log("  [--timeout MS] [--verbose] TEXT [TEXT ...]");
    console.log("NAME: rpc_queue; MS: 30000; the broker: $AMQP_URL.");
    Deno.exit(0);
  }
  if (queue === "") exit(2, "--queue must not be empty");
  if (!/^[1-9]\d{0,8}$/.test(timeout)) {
    exit(2, `--timeout must be ms, got "${timeout}"`);
  }
  if (texts.length === 0) exit(2, "give at least one text");
  const bad = texts.find((text) => Buffer.byteLength(text) > 1000);
  if (bad !== undefined) exit(2, "a text must be at most 1000 bytes");
  const url = Deno.env.get("AMQP_URL") ?? "amqp://localhost";
  const started = startClient(url, queue, Number(timeout), verbose);
  const client = await started.catch((error) => {
    return exit(1, `cannot connect to ${url}: ${why(error)}`);
  });
  // Ctrl-C: exit 0; the broker deletes our callback queue.
  Deno.addSignalListener("SIGINT", () => Deno.exit(0));
  for (const text of texts) console.log(` [x] Requesting reverse(${text})`);
  const answers = texts.map((text) => client.call(text));
  // Each answer once it and those asked before it are in.
  for (const answer of answers) {
    const result = await answer;
    if (result instanceof Error) exit(1, result.message);
    console.log(` [.] Got ${result}`);
  }
  await client.close();
}
