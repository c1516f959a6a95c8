/**
 * rpc_client.ts: the client of RabbitMQ's RPC tutorial (tutorial six), for Deno. It sends n to
 * the queue rpc_queue and waits on its callback queue for the reply with its correlation_id:
 *     deno run --allow-net --allow-env rpc_client.ts 30          # [.] Got 832040
 *     deno run --allow-net --allow-env rpc_client.ts 10 20 30    # three calls at once
 * @module
 */
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import amqp, { type Channel, type ChannelModel, type ConsumeMessage } from "npm:amqplib@2.3.1";

type Options = { queue?: string; timeout?: number; trace?: (line: string) => void };
type Call = { n: number; settle(outcome: bigint | Error): void };

/** Calls fib(n) on the server: one connection, one callback queue, any number of calls at once. */
export class FibonacciRpcClient {
  readonly #calls = new Map<string, Call>(); // the calls awaiting a reply, by correlation_id
  private constructor(
    private readonly connection: ChannelModel,
    private readonly channel: Channel,
    readonly callbackQueue: string,
    private readonly options: Options,
  ) {}

  /** Connects. Options: the server's queue (rpc_queue), each call's timeout (30000 ms), trace. */
  static async connect(url: string, options: Options = {}): Promise<FibonacciRpcClient> {
    // Step 1: connect, and open a channel (connect(), below, adds what the tutorial leaves out).
    const connection = await connect(url);
    const channel = await connection.createChannel();
    channel.on("error", () => {}); // should the broker close the channel, the calls time out
    // Step 2: the callback queue: exclusive, named by the broker, deleted when we disconnect.
    const { queue } = await channel.assertQueue("", { exclusive: true });
    const client = new FibonacciRpcClient(connection, channel, queue, options);
    // Step 3: consume it. noAck: a reply that gets lost is a call that times out.
    await channel.consume(queue, (reply) => reply && client.#onReply(reply), { noAck: true });
    // A lost connection fails every call in flight at once, not each at its timeout.
    connection.on("close", () => client.#failAll("lost the connection to the broker"));
    return client;
  }

  /** Step 4: call fib(n): publish n with reply_to and a fresh correlation_id; await the reply. */
  async call(n: number): Promise<bigint> {
    const { queue = "rpc_queue", timeout = 30_000, trace } = this.options;
    const correlationId = crypto.randomUUID();
    const replyTo = this.callbackQueue;
    trace?.(` [>] fib(${n}), correlation_id ${correlationId.slice(0, 8)}, reply_to ${replyTo}`);
    this.channel.sendToQueue(queue, Buffer.from(String(n)), { replyTo, correlationId });
    // Now remember the call. Its reply comes as a later event: never before this code has run.
    return await new Promise((resolve, reject) => {
      const settle = (outcome: bigint | Error) => {
        this.#calls.delete(correlationId);
        clearTimeout(timer);
        return outcome instanceof Error ? reject(outcome) : resolve(outcome);
      };
      const late = new Error(`fib(${n}): no reply within ${timeout} ms (is the server running?)`);
      const timer = setTimeout(() => settle(late), timeout);
      this.#calls.set(correlationId, { n, settle });
    });
  }

  /** Step 5: a reply settles the call its correlation_id names. */
  #onReply({ content, properties: { correlationId: id, type } }: ConsumeMessage): void {
    const call = this.#calls.get(id);
    const match = call ? `matches fib(${call.n})` : "no call waits for it, dropped";
    this.options.trace?.(` [<] reply ${String(id).slice(0, 8)}: ${match}`);
    const text = content.toString();
    if (!call) return; // a duplicate (after a redelivery) or a stray: dropped, it is no error
    if (type === "error") return call.settle(new Error(text)); // the server's own message
    if (/^\d+$/.test(text)) return call.settle(BigInt(text));
    call.settle(new Error(`fib(${call.n}): bad reply ${JSON.stringify(text.slice(0, 40))}`));
  }

  #failAll(why: string): void {
    for (const call of this.#calls.values()) call.settle(new Error(`fib(${call.n}): ${why}`));
  }

  /** Step 6: close the connection; the calls still waiting fail. */
  async close(): Promise<void> {
    this.#failAll("the client was closed");
    await this.connection.close().catch(() => {}); // closed already if the broker went away
  }
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

const USAGE = `Usage: deno run --allow-net --allow-env rpc_client.ts [options] N [N ...]
Asks for fib(N), N from 0 to 10000, several at once. Broker: $AMQP_URL (amqp://localhost).
Options: --queue NAME, the server's queue (default: rpc_queue); --timeout MS, how long
each call waits for its reply (default: 30000); --verbose: each request and reply, matched.`;

if (import.meta.main) {
  const [text, flag] = [{ type: "string" }, { type: "boolean" }] as const;
  const options = { queue: text, timeout: text, verbose: flag, help: { ...flag, short: "h" } };
  let stopping = false;
  try {
    const { values, positionals } = parseArgs({ args: Deno.args, options, allowPositionals: true });
    const { queue, timeout: ms = "30000", verbose, help } = values;
    if (help) {
      console.log(USAGE);
      Deno.exit(0);
    }
    if (!positionals.length) throw new TypeError("give at least one n, e.g. rpc_client.ts 30");
    const bad = positionals.find((n) => !/^\d{1,5}$/.test(n) || Number(n) > 10_000);
    if (bad !== undefined) throw new TypeError(`n must be a number from 0 to 10000, got "${bad}"`);
    if (!/^[1-9]\d{0,8}$/.test(ms)) throw new TypeError(`--timeout must be ms, got "${ms}"`);
    if (queue === "") throw new TypeError("--queue must not be empty");
    const url = Deno.env.get("AMQP_URL") ?? "amqp://localhost";
    const trace = verbose ? console.error : undefined;
    const client = await FibonacciRpcClient.connect(url, { queue, timeout: +ms, trace });
    // Ctrl-C: close the connection, and exit 0.
    Deno.addSignalListener("SIGINT", () => {
      stopping = true;
      client.close().finally(() => Deno.exit(0));
    });
    for (const n of positionals) console.log(` [x] Requesting fib(${+n})`);
    const results = await Promise.all(positionals.map((n) => client.call(Number(n))));
    for (const fib of results) console.log(` [.] Got ${fib}`);
    await client.close();
  } catch (error) {
    const usage = error instanceof TypeError; // a command line we do not take: exit 2
    const message = (error as Error).message.replace(/\. To specify .*/s, "");
    if (usage) console.error(`rpc_client: ${hidePassword(message)} (see --help)`);
    else if (!stopping) console.error(`rpc_client: ${message}`);
    if (!stopping) Deno.exit(usage ? 2 : 1);
  }
}
