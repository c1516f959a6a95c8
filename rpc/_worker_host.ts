/**
 * The code each worker of a {@linkcode WorkerPool} (rpc/workers.ts) runs:
 * loads the handler module, runs one call at a time on request bytes and
 * a context with a signal of its own, and sends back the reply or what
 * the handler threw. An uncaught error or unhandled rejection ends the
 * worker with one line to the pool, instead of a stack trace on stderr.
 *
 * @module
 */
import vm from "node:vm";
import { parentPort } from "node:worker_threads";
import type { Reply } from "./options.ts";
import type { RequestContext } from "./context.ts";
import {
  describeThrown,
  describeValue,
  firstLine,
  type FromWorker,
  rebuildError,
  type ToWorker,
  type WorkerContext,
} from "./_worker_protocol.ts";

/** What a handler module exports: `default` or `handler`. */
type ModuleHandler = (request: Uint8Array, context: RequestContext) => Reply | Promise<Reply>;

/** The worker scope's error events (this file is checked with the window's types). */
const scope = globalThis as unknown as {
  addEventListener(type: string, listener: (event: Event) => void): void;
  close(): void;
};
const port = parentPort!;

let handler: ModuleHandler | undefined;
/** The call in progress (one at a time), to abort. */
const running = new Map<number, AbortController>();

function post(message: FromWorker): void {
  port.postMessage(message);
}

/** Tells the pool why the worker ends (rather than print a stack trace), then ends it. */
function end(event: Event, message: string): void {
  event.preventDefault();
  post({ type: "crashed", message: firstLine(message) });
  scope.close();
}

scope.addEventListener("error", (event) => {
  end(event, `uncaught ${(event as ErrorEvent).message.replace(/^Uncaught /, "")}`);
});
scope.addEventListener("unhandledrejection", (event) => {
  const { message } = describeThrown((event as PromiseRejectionEvent).reason);
  end(event, `unhandled rejection: ${message}`);
});

port.on("message", (data: ToWorker) => {
  if (data.type === "load") load(data.module);
  else if (data.type === "call") run(data.id, data.request, data.context, data.limit);
  else running.get(data.id)?.abort(rebuildError(data.reason));
});

/** Imports the module and finds its handler. */
async function load(module: string): Promise<void> {
  try {
    const exports = await import(module);
    const found = typeof exports.default === "function"
      ? exports.default
      : typeof exports.handler === "function"
      ? exports.handler
      : undefined;
    if (!found) throw new Error("it exports no default function and no function named handler");
    handler = found;
    post({ type: "ready" });
  } catch (error) {
    post({ type: "load-failed", message: firstLine(describeThrown(error).message) });
  }
}

/** Runs the handler on one request and sends back its reply or what it threw. */
async function run(
  id: number,
  request: Uint8Array,
  context: WorkerContext,
  limit?: number,
): Promise<void> {
  const controller = new AbortController();
  running.set(id, controller);
  try {
    const call = () => handler!(request, { ...context, signal: controller.signal });
    const reply = await (limit === undefined ? call() : withinLimit(call, limit));
    if (typeof reply !== "string" && !(reply instanceof Uint8Array)) {
      throw new TypeError(
        `the handler returned ${describeValue(reply)}, not a reply (bytes or text)`,
      );
    }
    post({ type: "result", id, reply });
  } catch (error) {
    post({ type: "failed", id, error: describeThrown(error) });
  } finally {
    running.delete(id);
  }
}

/** Calls the handler through `callScript`, whose timeout V8 enforces even on code that never yields. */
const callScript = new vm.Script("globalThis[Symbol.for('rpc.workers.call')]()");
const CALL = Symbol.for("rpc.workers.call");

/**
 * Runs `call`, stopping its synchronous part (where code that never
 * yields spends its time) after `limit` ms: V8 interrupts it, which a
 * worker's `terminate()` cannot do in Deno 2.9.
 */
function withinLimit(call: () => Reply | Promise<Reply>, limit: number): Reply | Promise<Reply> {
  const scope = globalThis as Record<symbol, unknown>;
  scope[CALL] = call;
  try {
    return callScript.runInThisContext({ timeout: Math.max(1, Math.round(limit)) });
  } catch (error) {
    if ((error as { code?: unknown }).code !== "ERR_SCRIPT_EXECUTION_TIMEOUT") throw error;
    throw new DOMException(
      `the handler computed for ${Math.round(limit)} ms without yielding, past its time: stopped`,
      "TimeoutError",
    );
  } finally {
    delete scope[CALL];
  }
}
