/**
 * Errors: why a call failed ({@linkcode RpcError}), why no reply came
 * ({@linkcode NoReplyDiagnosis}), and a handler's way to refuse a request
 * ({@linkcode BadRequestError}).
 *
 * @module
 */

/**
 * Why an {@linkcode RpcError} was raised:
 * - `"remote"`: the server answered with an error reply that names no
 *   code (an older server, or another tutorial server);
 * - `"bad-request"`: the request was refused as unreadable or invalid, by
 *   the server (its handler threw {@linkcode BadRequestError}, or the
 *   request broke the contract) or, for a contract, by the client before
 *   sending;
 * - `"internal"`: the server's handler failed; the message names no detail
 *   of it, only an id to find the error in the server's log;
 * - `"handler-timeout"`: the server's handler ran out of time
 *   (`handlerTimeout`);
 * - `"timeout"`: no reply before the deadline; `diagnosis` says why;
 * - `"no-route"`: the request queue does not exist;
 * - `"connection-lost"`: the broker connection dropped, or is reconnecting;
 * - `"rejected"`: the queue refused the request (full, or no leader yet);
 * - `"closed"`: the client was closed;
 * - `"bad-reply"`: the reply was too large, or not what the caller reads.
 *
 * A handler may throw an `RpcError` with a code of its own (any text):
 * the caller's `RpcError` carries that code and the handler's message.
 */
export type RpcErrorCode =
  | "remote"
  | "bad-request"
  | "internal"
  | "handler-timeout"
  | "timeout"
  | "no-route"
  | "connection-lost"
  | "rejected"
  | "closed"
  | "bad-reply"
  // deno-lint-ignore ban-types
  | (string & {});

/**
 * The header of an error reply (`type: error`) that names its code: one
 * of {@linkcode RpcErrorCode}'s, or a handler's own. The body stays the
 * error's text, as the tutorials' clients print it.
 */
export const ERROR_CODE_HEADER = "x-error-code";

/**
 * Why a call timed out, as far as one look at the request queue tells:
 * - `"no-server"`: nobody consumes the queue; the request waits in it.
 * - `"no-answer"`: servers consume it but did not answer in time: they
 *   are behind, if `queued` is large; if nothing waits in the queue, a
 *   server took the request and was slow or lost the reply, or the request
 *   expired in the queue (a queue TTL) before a server took it.
 * - `"blocked"`: the broker blocks this client's publishing (a resource
 *   alarm); `detail` is the broker's reason.
 * - `"disconnected"`: the connection to the broker was lost meanwhile.
 * - `"no-queue"`: the queue is gone.
 * - `"unknown"`: the look failed; `detail` says why.
 */
export interface NoReplyDiagnosis {
  /** What the look at the queue found. */
  cause: "no-server" | "no-answer" | "blocked" | "disconnected" | "no-queue" | "unknown";
  /** Servers consuming the request queue. */
  consumers?: number;
  /** Requests waiting in the request queue, not yet taken by any server. */
  queued?: number;
  /** For `"unknown"`: why the look failed; for `"blocked"`: the broker's reason. */
  detail?: string;
}

/**
 * A failed call. `code` says why; for `"remote"`, `message` is the server's.
 *
 * @example
 * ```ts
 * import { RpcClient } from "./client.ts";
 *
 * await using client = await RpcClient.connect();
 * try {
 *   await client.call("rpc_queue", "30");
 * } catch (error) {
 *   if (error instanceof RpcError && error.code === "timeout") console.log(error.diagnosis);
 * }
 * ```
 */
export class RpcError extends Error {
  /** Always `"RpcError"`. */
  override name = "RpcError";
  /** Why the call failed. */
  readonly code: RpcErrorCode;
  /** For a `"timeout"`: why no reply came. */
  readonly diagnosis?: NoReplyDiagnosis;

  /** An error with this code and message (and, for a timeout, the diagnosis). */
  constructor(code: RpcErrorCode, message: string, diagnosis?: NoReplyDiagnosis) {
    super(message);
    this.code = code;
    this.diagnosis = diagnosis;
  }
}

/**
 * Thrown by a handler to refuse a request it cannot read. The caller gets
 * an error reply with the message, as for any error; the server's log says
 * "Bad request" rather than "Handler failed".
 *
 * @example
 * ```ts
 * const handler = (request: Uint8Array) => {
 *   if (request.length === 0) throw new BadRequestError("empty request");
 *   return request;
 * };
 * ```
 */
export class BadRequestError extends Error {
  /** Always `"BadRequestError"`. */
  override name = "BadRequestError";
}

/**
 * The timeout error for a call named `label` to `queue`, with what the
 * diagnosis found, in words an operator can act on.
 *
 * @example
 * ```ts
 * timeoutError("fib(30)", 5_000, "rpc_queue", { cause: "no-server", consumers: 0, queued: 1 });
 * // RpcError: fib(30): no reply within 5000 ms: no server consumes "rpc_queue" (...)
 * ```
 */
export function timeoutError(
  label: string,
  timeout: number,
  queue: string,
  diagnosis: NoReplyDiagnosis,
): RpcError {
  const why = {
    "no-server": () => `no server consumes "${queue}" (${waiting(diagnosis.queued)}; start one)`,
    "no-answer": () => noAnswer(queue, diagnosis),
    "blocked": () =>
      `the broker is blocking publishers (${diagnosis.detail}): a resource alarm; ` +
      `requests wait in this client until it clears`,
    "disconnected": () => "the connection to the broker was lost meanwhile",
    "no-queue": () => `the queue "${queue}" no longer exists`,
    "unknown": () => `could not look at "${queue}" (${diagnosis.detail})`,
  }[diagnosis.cause]();
  return new RpcError("timeout", `${label}: no reply within ${timeout} ms: ${why}`, diagnosis);
}

/** "N requests waiting in it". */
function waiting(queued: number | undefined): string {
  return `${queued} request${queued === 1 ? "" : "s"} waiting in it`;
}

/**
 * Servers consume the queue, and none answered: advice only from what the
 * look saw. Requests waiting mean the servers are behind; none waiting
 * means a server took the request and was slow or lost the reply, or the
 * request expired in the queue before any server took it.
 */
function noAnswer(queue: string, { consumers, queued }: NoReplyDiagnosis): string {
  const servers = consumers === 1 ? "1 server consumes" : `${consumers} servers consume`;
  if (queued) {
    return `${servers} "${queue}" but none answered in time (${waiting(queued)}: ` +
      `the servers are behind; add servers, or allow more time)`;
  }
  return `${servers} "${queue}" and no request waits in it: a server took the request ` +
    `and did not answer in time (a slow handler, or a lost reply), or the request expired ` +
    `in the queue before a server took it (a queue TTL, x-message-ttl?)`;
}

/**
 * The codes of a call's failure, which a handler's own `RpcError` does not
 * carry: thrown by a handler, such an error is one of its own calls to
 * another service failing (`timeout`, `no-route`, ...), whose message names
 * that service's queue. Its caller hears `internal`, as for any failure.
 */
const NOT_THE_HANDLERS: ReadonlySet<string> = new Set([
  "remote",
  "internal",
  "handler-timeout",
  "timeout",
  "no-route",
  "connection-lost",
  "rejected",
  "closed",
  "bad-reply",
]);

/**
 * What a failed handler's caller is told: the `code` of the error reply
 * (its {@linkcode ERROR_CODE_HEADER}) and its text. For an internal error,
 * also the `id` the text names and the full `detail` (message and stack)
 * that only the server's log gets.
 */
export interface HandlerFailure {
  /** The error reply's code. */
  readonly code: RpcErrorCode;
  /** The error reply's body: what the caller reads. */
  readonly message: string;
  /** For `"internal"`: the id that names the error in the caller's message and in the log. */
  readonly id?: string;
  /** For `"internal"`: the whole error, for the server's log only. */
  readonly detail?: string;
}

/**
 * What the caller of a handler that threw `thrown` is told. A
 * {@linkcode BadRequestError} and a handler's own {@linkcode RpcError}
 * (a code of its own, or `bad-request`) reach it with their code and
 * message; anything else (an `RpcError` of a call the handler made to
 * another service, any value: an
 * Error, `undefined`, a Symbol, an object without a prototype) reaches it
 * as `internal error (id …)`, naming no detail of it (a database URL in a
 * message is no business of the caller's), while `detail` keeps the whole
 * error for the server's log.
 *
 * @example
 * ```ts
 * handlerFailure(new BadRequestError("empty request")); // { code: "bad-request", message: "empty request" }
 * handlerFailure(new Error("insert failed: postgres://app:pw@db/prod")).message; // "internal error (id 3f2a9c1e)"
 * ```
 */
export function handlerFailure(thrown: unknown): HandlerFailure {
  try {
    if (thrown instanceof BadRequestError) return { code: "bad-request", message: thrown.message };
    if (
      thrown instanceof RpcError && typeof thrown.code === "string" && thrown.code &&
      !NOT_THE_HANDLERS.has(thrown.code)
    ) {
      return { code: thrown.code, message: String(thrown.message) };
    }
  } catch {
    // A value whose very reading throws: internal, below.
  }
  const id = crypto.randomUUID().slice(0, 8);
  return {
    code: "internal",
    message: `internal error (id ${id})`,
    id,
    detail: describeThrown(thrown),
  };
}

/**
 * Any thrown value as text, for a log: an Error's stack (its message
 * included), else the value as a string. Never throws, whatever the value
 * (`Object.create(null)` has no `toString`; a Proxy may throw on any look).
 *
 * @example
 * ```ts
 * describeThrown(Object.create(null)); // "thrown [object Object]"
 * ```
 */
export function describeThrown(thrown: unknown): string {
  try {
    if (thrown instanceof Error) return String(thrown.stack || `${thrown.name}: ${thrown.message}`);
    return typeof thrown === "symbol"
      ? thrown.toString()
      : `thrown ${typeof thrown}: ${String(thrown)}`;
  } catch {
    try {
      return `thrown ${Object.prototype.toString.call(thrown)}`;
    } catch {
      return "thrown a value that cannot be read";
    }
  }
}
