// rpc_client.ts, exercise 7 of WORKSHOP.md solved: the tutorial's client
// calling reverse(text), not fib(n). It sends each text to rpc_queue and
// waits on its callback queue for the reply with its correlation_id:
//     deno run --allow-net --allow-env rpc_client.ts hello "Deno 🦕"
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import amqp from "npm:amqplib@2.3.1";

// Connects; gives back call(text), close() and the callback queue name.
export async function startClient(
  url: string,
  queue = "rpc_queue",
  timeout = 30_000,
  verbose = false,
) {
  // Step 1: connect to RabbitMQ, and open a channel. noDelay: send each
  // message at once; timeout: a port that never speaks AMQP fails in 10 s.
  const options = { noDelay: true, timeout: 10_000 };
  const connection = await amqp.connect(url, options);
  connection.on("error", () => {}); // "close" follows it, and fails calls
  const channel = await connection.createChannel();
  channel.on("error", () => {}); // "close" follows it, and fails calls
  // Step 2: declare a callback queue for the replies: the broker names
  // it, only we may use it, and it goes away when we disconnect.
  const declared = await channel.assertQueue("", { exclusive: true });
  const callbackQueue = declared.queue;
  // The calls waiting for their reply, by correlation_id.
  const calls = new Map();

  // Step 3: consume the callback queue. noAck: a lost reply times out.
  await channel.consume(callbackQueue, (reply) => {
    if (reply === null) return; // only if our queue were deleted
    const correlationId = reply.properties.correlationId;
    const id = String(correlationId).slice(0, 8);
    const text = reply.content.toString();
    const call = calls.get(correlationId);
    // A reply that no call waits for is a duplicate (a server died
    // before its ack, and another answered again) or a stray: drop it.
    if (call === undefined) {
      if (verbose) console.error(` [<] reply ${id}: no call waits, dropped`);
      return;
    }
    const asked = `reverse(${call.text})`;
    if (verbose) console.error(` [<] reply ${id}: matches ${asked}`);
    // Any text is an answer, unless its type is "error".
    if (reply.properties.type !== "error") {
      settle(correlationId, text);
    } else {
      settle(correlationId, new Error(`${asked}: ${text}`));
    }
  }, { noAck: true });

  // Asks for reverse(text). Gives the answer, or an Error that says why.
  function call(text: string): Promise<string | Error> {
    const correlationId = crypto.randomUUID();
    return new Promise((resolve) => {
      // Step 4: register the call first, so that its reply finds it,
      // and give up on it after `timeout` ms.
      const late = new Error(`reverse(${text}): no reply within ${timeout} ms`);
      const timer = setTimeout(() => settle(correlationId, late), timeout);
      calls.set(correlationId, { text, resolve, timer });
      // Step 5: send the text to the server's queue, with reply_to (our
      // callback queue) and the call's correlation_id. expiration: if no
      // server takes the request before we give up, the broker drops it.
      const replyTo = callbackQueue;
      const options = { replyTo, correlationId, expiration: timeout };
      channel.sendToQueue(queue, Buffer.from(text), options);
      const id = correlationId.slice(0, 8);
      const sent = ` [>] reverse(${text}), correlation_id ${id}`;
      if (verbose) console.error(`${sent}, reply_to ${replyTo}`);
    });
  }
  // Step 6: settle a call: forget it, stop its timer, give the answer.
  function settle(correlationId: string, answer: string | Error) {
    const call = calls.get(correlationId);
    calls.delete(correlationId);
    clearTimeout(call.timer);
    call.resolve(answer);
  }
  // A lost connection fails every call at once, not each at its timeout.
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
  console.error(`rpc_client: ${hidePassword(message.split("\n")[0])}${hint}`);
  Deno.exit(code);
}

const USAGE = `Usage: rpc_client.ts [--queue NAME] [--timeout MS] [--verbose] T
Asks the server on the queue NAME (rpc_queue) at $AMQP_URL for reverse(T),
each text T at most 1000 bytes, each call waiting MS ms (30000) at most.`;

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
    exit(2, error instanceof Error ? error.message : String(error));
  }
  if (args.values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const queue = args.values.queue;
  const ms = args.values.timeout;
  const texts = args.positionals;
  const bad = texts.find((text) => Buffer.byteLength(text) > 1000);
  if (queue === "") exit(2, "--queue must not be empty");
  if (!/^[1-9]\d{0,8}$/.test(ms)) exit(2, `--timeout must be ms, got "${ms}"`);
  if (texts.length === 0) exit(2, "give at least one text, e.g. hello");
  if (bad !== undefined) exit(2, "each text must be at most 1000 bytes");
  const url = Deno.env.get("AMQP_URL") ?? "amqp://localhost";
  const started = startClient(url, queue, Number(ms), args.values.verbose);
  const client = await started.catch((error) => {
    return exit(1, `cannot connect to ${url}: ${why(error)}`);
  });
  // Ctrl-C: exit 0 at once; the broker deletes our callback queue.
  Deno.addSignalListener("SIGINT", () => Deno.exit(0));
  for (const text of texts) console.log(` [x] Requesting reverse(${text})`);
  const answers = texts.map((text) => client.call(text));
  // Each answer as soon as it, and those asked before it, are in.
  for (const answer of answers) {
    const result = await answer;
    if (result instanceof Error) exit(1, result.message);
    console.log(` [.] Got ${result}`);
  }
  await client.close();
}
