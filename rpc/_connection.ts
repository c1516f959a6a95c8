/**
 * Connections to the broker: failover between the nodes of a cluster,
 * reconnection with amqplib's own recovery (backing off in a crash loop),
 * TLS, one-line failure messages without passwords, and coalesced socket
 * writes.
 *
 * @module
 */
import amqp from "npm:amqplib@2.3.1";
import type { ChannelModel, RecoveringChannelModel } from "npm:amqplib@2.3.1";
import { type Backoff, backoffDelay } from "./_backoff.ts";
import { CrashLoopWatch } from "./_crash_loop.ts";
import { describeTlsFailure, type TlsOptions, tlsSocketOptions } from "./_tls.ts";
import { redact } from "./_urls.ts";

/** How long a TCP connect plus the AMQP handshake may take, in ms. */
export const CONNECT_TIMEOUT_MS = 10_000;

/**
 * Heartbeat timeout, in seconds, asked of the broker: chosen between two
 * faults. A peer that vanishes without a word (a dead host, a dropped NAT
 * entry) is noticed only by silence: amqplib gives up after two silent
 * intervals (20 to 30 s at 10 s); RabbitMQ's default of 60 s would mean 2
 * to 3 minutes of calls into the void. But a process whose event loop is
 * blocked sends no heartbeat either, and the broker drops its connection:
 * at 5 s, after ~10 s of blocking; at 10 s (RabbitMQ 3.10, measured), a
 * handler computing 25 s without yielding kept its connection and one
 * computing 40 s lost it. RabbitMQ advises 6 to 15 s against such false
 * positives; 10 s sits in the middle. Longer CPU-bound work belongs off the
 * event loop. A `heartbeat` parameter in the URL (`?heartbeat=30`) overrides it.
 */
export const HEARTBEAT_SECONDS = 10;

/** Waits between reconnection attempts: each round of the URL list twice as long, 100 ms to 5 s. */
const RECONNECT_BACKOFF: Backoff = { first: 100, max: 5_000 };

/**
 * Ignores an error, on purpose. Used only where a failure changes nothing:
 * closing what is already closed, or an "error" event whose "close" event
 * (handled elsewhere) says the same.
 *
 * @example
 * ```ts
 * import amqp from "npm:amqplib@2.3.1";
 * const model = await amqp.connect("amqp://localhost");
 * const channel = await model.createChannel();
 * channel.on("error", ignoreError);
 * await channel.close().catch(ignoreError);
 * ```
 */
export function ignoreError(_error: unknown): void {}

/**
 * Settles as `work` does, or rejects with `message` after `ms`: whichever
 * comes first.
 *
 * @example
 * ```ts
 * import amqp from "npm:amqplib@2.3.1";
 * const model = await amqp.connect("amqp://localhost");
 * await within(model.createChannel(), 1_000, "the broker did not answer in time");
 * ```
 */
export function within<T>(work: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

/**
 * One line saying why talking to the broker at `url` failed, without secrets.
 *
 * @example
 * ```ts
 * import amqp from "npm:amqplib@2.3.1";
 * const url = new URL("amqp://guest:guest@127.0.0.1:1");
 * const error = await amqp.connect(url.href).catch((error: unknown) => error);
 * describeFailure(error, url);
 * // "cannot connect to amqp://guest:***@127.0.0.1:1: connection refused (is RabbitMQ running?)"
 * ```
 */
export function describeFailure(error: unknown, url: URL): string {
  const message = error instanceof Error ? error.message : String(error);
  const code = (error as { code?: unknown })?.code;
  const where = redact(url);
  if (error instanceof Deno.errors.NotCapable || code === "EPERM") {
    const port = url.port || (url.protocol === "amqps:" ? "5671" : "5672");
    return `not allowed to connect to ${where}: run with --allow-net=${url.hostname}:${port} ` +
      `(or --allow-net)`;
  }
  const tls = describeTlsFailure(error, where);
  if (tls) return tls;
  if (error instanceof RangeError && /call stack/i.test(message)) {
    return `a message from the broker could not be decoded (its headers nest too deep: ` +
      `${message})`;
  }
  if (code === "ECONNREFUSED") {
    return `cannot connect to ${where}: connection refused (is RabbitMQ running?)`;
  }
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") {
    return `cannot connect to ${where}: unknown host`;
  }
  if (message === "connect ETIMEDOUT" || code === "ETIMEDOUT") {
    return `cannot connect to ${where}: no AMQP answer within ${CONNECT_TIMEOUT_MS / 1000} s ` +
      `(is that a RabbitMQ port? a firewall or a load balancer with no backend?)`;
  }
  if (/SASL mechanism EXTERNAL is not provided/.test(message)) {
    return `cannot log in to ${where} with the client certificate: the broker does not offer ` +
      `SASL EXTERNAL (it needs the rabbitmq_auth_mechanism_ssl plugin, and its own TLS ` +
      `listener with the client's CA)`;
  }
  if (/ACCESS[-_]REFUSED/.test(message)) {
    return `cannot log in to ${where}: access refused (wrong user name or password?)`;
  }
  if (message.startsWith("Expected ConnectionOpenOk; got <ConnectionClose")) {
    const vhost = decodeURIComponent(url.pathname.slice(1)) || "/";
    return `cannot open virtual host "${vhost}" on ${where} (does it exist? rabbitmqctl list_vhosts)`;
  }
  if (message === "Unexpected close" || code === "ECONNRESET" || code === "EPIPE") {
    return `the connection to ${where} broke off (${code ?? message})`;
  }
  // amqplib's own messages name the broker's reply code; they never hold the URL.
  return message.split("\n")[0];
}

/**
 * The brokers a program may use (the nodes of a cluster, or just one), and
 * the one it uses now. amqplib reads the fields below each time it connects,
 * so moving on to the next URL moves amqplib's recovery with it.
 */
class Brokers {
  readonly urls: readonly URL[];
  /** Deaths soon after connecting, again and again: see rpc/_crash_loop.ts. */
  readonly crashes = new CrashLoopWatch();
  #index = 0;
  #connectedOnce = false;

  constructor(urls: readonly URL[]) {
    this.urls = urls;
  }

  /** The broker connected to, or being tried. */
  get current(): URL {
    return this.urls[this.#index];
  }

  // The fields amqplib's connect() reads from a URL object.
  get protocol(): string {
    return this.current.protocol.slice(0, -1);
  }
  get hostname(): string {
    return this.current.hostname.replace(/^\[|\]$/g, "");
  }
  get port(): number | undefined {
    return this.current.port ? Number(this.current.port) : undefined;
  }
  get username(): string | undefined {
    return this.current.username ? decodeURIComponent(this.current.username) : undefined;
  }
  get password(): string | undefined {
    return this.current.password ? decodeURIComponent(this.current.password) : undefined;
  }
  get vhost(): string {
    return this.current.pathname.slice(1);
  }
  get heartbeat(): number {
    return Number(this.current.searchParams.get("heartbeat") ?? HEARTBEAT_SECONDS);
  }

  /** Called once the first connection is up: from then on, failures back off. */
  connected(): void {
    this.#connectedOnce = true;
  }

  /** Whether start-up is over: the first connection was up. */
  get started(): boolean {
    return this.#connectedOnce;
  }

  /**
   * amqplib's recovery asks this before each new attempt: go on to the next
   * URL. The first connection tries each URL once, without waiting; later,
   * each full round of the list waits twice as long as the one before (up
   * to 5 s), give or take 20 % so that many clients do not come back at
   * once; in a crash loop, longer (see rpc/_crash_loop.ts).
   */
  nextDelay = (attempt: number): number => {
    this.#index = (this.#index + 1) % this.urls.length;
    if (!this.#connectedOnce) return 0;
    const round = Math.floor((attempt - 1) / this.urls.length);
    return Math.max(backoffDelay(round + 1, RECONNECT_BACKOFF), this.crashes.delay());
  };
}

/** What {@linkcode openConnection} needs besides the URLs. */
export interface ConnectionOptions {
  /** The `connection_name` the broker shows (`rabbitmqctl list_connections`). */
  name: string;
  /** Runs on every new connection, the first included: open channels, declare, consume. */
  setup: (model: ChannelModel) => Promise<void>;
  /** Hears which broker it is on, and each loss and reconnection. */
  log: (line: string) => void;
  /**
   * Hears the broker block this connection's publishing (a resource alarm:
   * memory or disk), with the broker's reason, and unblock it (undefined).
   */
  blocked?: (reason: string | undefined) => void;
  /** TLS settings for `amqps://` URLs. Default: the system's CAs, no client certificate. */
  tls?: TlsOptions;
}

/**
 * Connects to the first broker that answers, with amqplib's recovery: a lost
 * connection is rebuilt on the next broker in turn, and `setup` runs again
 * on every new connection. Fails, with one line per broker tried, if none
 * answers at start. In a crash loop (the connection dies the same way
 * again and again, soon after opening) it backs off up to 30 s and logs
 * one line per period instead of one per loss: see rpc/_crash_loop.ts.
 *
 * @example
 * ```ts
 * const connection = await openConnection([new URL("amqp://localhost")], {
 *   name: "my service",
 *   setup: async (model) => void await model.createChannel(),
 *   log: console.log,
 * });
 * ```
 * @throws {TypeError} for TLS settings that do not fit the URLs (see rpc/_tls.ts).
 */
export async function openConnection(
  urls: readonly URL[],
  { name, setup, log, blocked, tls }: ConnectionOptions,
): Promise<RecoveringChannelModel> {
  const brokers = new Brokers(urls);
  const { crashes } = brokers;
  const failures: string[] = [];
  const connection = await amqp.connect(brokers, {
    ...tlsSocketOptions(urls, tls),
    noDelay: true, // with Nagle's algorithm on, every message waits ~40 ms
    timeout: CONNECT_TIMEOUT_MS, // a listener that never speaks AMQP must not hang us
    clientProperties: { connection_name: name },
    recovery: {
      waitForConnect: false, // so that the listeners below hear the first attempt
      initialMaxRetries: brokers.urls.length - 1, // each URL once, then give up
      calculateDelay: brokers.nextDelay,
      setup: async (model: ChannelModel) => {
        crashes.up();
        coalesceWrites(model);
        if ((brokers.started || brokers.urls.length > 1) && !crashes.looping) {
          log(` [x] Connected to ${redact(brokers.current)}`);
        }
        await setup(model);
      },
    },
  });
  hearLosses(connection, brokers, log, failures);
  if (blocked) {
    connection.on("blocked", (reason: string) => blocked(String(reason || "no reason given")));
    connection.on("unblocked", () => blocked(undefined));
  }
  try {
    await connection.waitForConnect();
  } catch {
    throw new Error(failures.join("; "));
  }
  brokers.connected();
  return connection;
}

/**
 * Logs each loss and reconnection (after start-up: before it, `failures`
 * collects why each broker failed); in a crash loop, one line per period.
 */
function hearLosses(
  connection: RecoveringChannelModel,
  brokers: Brokers,
  log: (line: string) => void,
  failures: string[],
): void {
  const { crashes } = brokers;
  // Without an "error" listener, an abrupt loss (a reset, a missed heartbeat)
  // would throw out of amqplib and kill the process. "disconnect" says it.
  connection.on("error", ignoreError);
  connection.on("connect-failed", (error: Error) => {
    const failure = describeFailure(error, brokers.current);
    crashes.down(failure); // counts only if the connection was up (its setup failed)
    if (!brokers.started) failures.push(failure);
    else if (!crashes.looping) log(` [!] ${failure}`);
  });
  connection.on("disconnect", (error: Error) => {
    const failure = describeFailure(error, brokers.current);
    crashes.down(failure);
    if (!crashes.looping) log(` [!] Lost ${redact(brokers.current)}: ${failure}`);
  });
  connection.on("reconnect-scheduled", ({ delay }: { delay: number }) => {
    if (!brokers.started) return;
    const where = redact(brokers.current);
    if (!crashes.looping) log(` [!] Reconnecting to ${where} in ${delay} ms`);
    else {
      const report = crashes.report(where, delay);
      if (report) log(report);
    }
  });
}

/**
 * Many frames, one write. amqplib hands the socket each AMQP frame on its
 * own, and each becomes a system call of its own: at load, one per request,
 * per reply and per ack, and most of the CPU a server spends. Corking the
 * socket at the first write of a task and uncorking it as soon as that task
 * is done (a microtask) sends the frames of a whole burst in one write; no
 * frame waits for a later task. The socket is amqplib's own (not part of
 * its typed API): if a later amqplib hides it, frames go out one by one again.
 */
function coalesceWrites(model: ChannelModel): void {
  const socket = (model.connection as { stream?: Partial<Socket> }).stream;
  if (!socket?.write || !socket.cork || !socket.uncork) return;
  const { write, cork, uncork } = socket as Socket;
  let corked = false;
  const flush = () => {
    corked = false;
    uncork.call(socket);
  };
  socket.write = (...args: unknown[]) => {
    if (!corked) {
      corked = true;
      cork.call(socket);
      queueMicrotask(flush);
    }
    return write.apply(socket, args);
  };
}

/** The part of a Node socket that coalesceWrites uses. */
type Socket = { write(...args: unknown[]): boolean; cork(): void; uncork(): void };
