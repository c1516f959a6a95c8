/**
 * The messages between a {@linkcode WorkerPool} (rpc/workers.ts) and its
 * workers (rpc/_worker_host.ts), and how a thrown value crosses between
 * them: as its name, message and code, since a worker's values may not be
 * cloneable (a function, a symbol, an object without a prototype).
 *
 * @module
 */
import { pathToFileURL } from "node:url";
import type { RequestContext } from "./context.ts";
import { BadRequestError, RpcError } from "./errors.ts";
import type { Reply } from "./options.ts";
import type { Worker } from "node:worker_threads";

/** What the worker gets of a request's context: all but the signal, which it gets its own of. */
export type WorkerContext = Omit<RequestContext, "signal">;

/** A thrown value, as it crosses to the other thread. */
export type Thrown = { name: string; message: string; code?: string; stack?: string };

/**
 * Pool to worker: load the handler module; run a call (`limit`: ms its
 * synchronous part may compute); abort a call.
 */
export type ToWorker =
  | { type: "load"; module: string }
  | { type: "call"; id: number; request: Uint8Array; context: WorkerContext; limit?: number }
  | { type: "abort"; id: number; reason: Thrown };

/**
 * Worker to pool: the module is loaded (or not); a call's reply or error;
 * the worker is ending by itself (an uncaught error, `self.close()`,
 * `Deno.exit()`).
 */
export type FromWorker =
  | { type: "ready" }
  | { type: "load-failed"; message: string }
  | { type: "result"; id: number; reply: Reply }
  | { type: "failed"; id: number; error: Thrown }
  | { type: "crashed"; message: string };

/**
 * Any thrown value as a {@linkcode Thrown}: an Error keeps its name,
 * message, stack and string `code`; anything else becomes an Error saying
 * what was thrown. Never throws itself, whatever `value` is.
 *
 * @example
 * ```ts
 * describeThrown(Object.create(null)).message;
 * // "the handler threw an object without a prototype, not an Error"
 * ```
 */
export function describeThrown(value: unknown): Thrown {
  try {
    if (value instanceof Error) {
      const code = (value as { code?: unknown }).code;
      return {
        name: String(value.name),
        message: String(value.message),
        code: typeof code === "string" ? code : undefined,
        stack: typeof value.stack === "string" ? value.stack : undefined,
      };
    }
    return { name: "Error", message: `the handler threw ${describeValue(value)}, not an Error` };
  } catch {
    return { name: "Error", message: "the handler threw a value that cannot be read" };
  }
}

/**
 * A few words for a value that is not an Error (or a reply).
 *
 * @example
 * ```ts
 * describeValue(Symbol("odd")); // "Symbol(odd)"
 * ```
 */
export function describeValue(value: unknown): string {
  if (typeof value === "string") {
    return JSON.stringify(value.length > 100 ? `${value.slice(0, 100)}…` : value);
  }
  if (typeof value === "function") return "a function";
  if (typeof value !== "object" || value === null) return String(value);
  if (Object.getPrototypeOf(value) === null) return "an object without a prototype";
  return `an object (${Object.prototype.toString.call(value)})`;
}

/**
 * The Error a {@linkcode Thrown} stands for, on this side: an
 * {@linkcode RpcError} keeps its code, a {@linkcode BadRequestError} its
 * class, an abort its DOMException, any other its name and message. The
 * stack is the thread's it was thrown in.
 *
 * @example
 * ```ts
 * rebuildError({ name: "TypeError", message: "bad type" }).name; // "TypeError"
 * ```
 */
export function rebuildError(thrown: Thrown): Error {
  let error: Error;
  if (thrown.name === "RpcError" && thrown.code !== undefined) {
    error = new RpcError(thrown.code, thrown.message);
  } else if (thrown.name === "BadRequestError") {
    error = new BadRequestError(thrown.message);
  } else if (thrown.name === "AbortError" || thrown.name === "TimeoutError") {
    error = new DOMException(thrown.message, thrown.name);
  } else {
    error = new Error(thrown.message);
    error.name = thrown.name;
  }
  if (thrown.stack) error.stack = thrown.stack;
  return error;
}

/**
 * The headers, without the values that cannot be cloned to a worker (a
 * rare case: amqplib decodes headers into plain data).
 *
 * @example
 * ```ts
 * cloneableHeaders({ tenant: "acme", callback: () => 1 }); // { tenant: "acme" }
 * ```
 */
export function cloneableHeaders(
  headers: Readonly<Record<string, unknown>>,
): Record<string, unknown> {
  const kept: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(headers)) {
    try {
      kept[name] = structuredClone(value);
    } catch {
      // Left out: the worker cannot receive it.
    }
  }
  return kept;
}

/**
 * The module's URL as text: a URL as it is, a path resolved against the
 * working directory.
 *
 * @example
 * ```ts
 * moduleHref("/srv/handler.ts"); // "file:///srv/handler.ts"
 * ```
 */
export function moduleHref(moduleUrl: URL | string): string {
  if (moduleUrl instanceof URL) return moduleUrl.href;
  if (/^[a-z][a-z\d+.-]+:/i.test(moduleUrl)) return new URL(moduleUrl).href;
  return pathToFileURL(moduleUrl).href;
}

/**
 * The context's fields a worker gets (all but the signal), with defaults
 * for those missing.
 *
 * @example
 * ```ts
 * workerContext({ queue: "q" }).redelivered; // false
 * ```
 */
export function workerContext(context: Partial<RequestContext>): WorkerContext {
  return {
    queue: context.queue ?? "",
    correlationId: context.correlationId ?? "",
    headers: context.headers ?? {},
    userId: context.userId,
    redelivered: context.redelivered ?? false,
    deadline: context.deadline,
  };
}

/**
 * The first line of a message: module errors come with a stack.
 *
 * @example
 * ```ts
 * firstLine("Module not found\n    at file:///a.ts:1:1"); // "Module not found"
 * ```
 */
export function firstLine(text: string): string {
  return text.split("\n", 1)[0].trim();
}

/** One call: queued, then running in a worker. */
export type Job = {
  id: number;
  request: Uint8Array;
  context: WorkerContext;
  signal?: AbortSignal;
  resolve: (reply: Reply) => void;
  reject: (error: unknown) => void;
  /** How long its synchronous part may compute, in ms, if it has a deadline. */
  limit?: number;
  /** Answered, failed or aborted already. */
  settled: boolean;
  onAbort?: () => void;
};

/** One worker, and the call it runs. */
export type Slot = {
  worker: Worker;
  state: "loading" | "idle" | "busy" | "dead";
  job?: Job;
  /** Set while a worker whose call was aborted gets its grace. */
  graceTimer?: ReturnType<typeof setTimeout>;
};

/**
 * Whether a worker runs, or may soon.
 *
 * @example
 * ```ts
 * declare const slots: Slot[];
 * slots.filter(isLive).length; // the workers running or loading
 * ```
 */
export function isLive(slot: Slot): boolean {
  return slot.state !== "dead";
}
