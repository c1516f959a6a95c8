/**
 * Handlers that compute: a pool of workers, each loading a handler module,
 * that runs requests off the server's event loop. A handler computing for
 * seconds without yielding would otherwise stop the heartbeats: the broker
 * drops the connection and hands the request to another server.
 *
 * @module
 */
import { Worker } from "node:worker_threads";
import type { RequestContext } from "./context.ts";
import type { Reply } from "./options.ts";
import {
  cloneableHeaders,
  describeThrown,
  firstLine,
  type FromWorker,
  isLive,
  type Job,
  moduleHref,
  rebuildError,
  type Slot,
  type ToWorker,
  type WorkerContext,
  workerContext,
} from "./_worker_protocol.ts";

/**
 * How long a worker whose call was aborted gets to return before it is
 * replaced, in ms: the `abortGrace` default. A handler that passes its
 * signal on stops well within it; one that never yields cannot notice it.
 */
export const DEFAULT_ABORT_GRACE_MS = 1_000;

/** Waits before loading a replacement again after it failed to load: the first, and the most. */
const RELOAD_FIRST_DELAY_MS = 1_000;
const RELOAD_MAX_DELAY_MS = 30_000;

/** The worker code, which loads the handler module (rpc/_worker_host.ts). */
const HOST = new URL("./_worker_host.ts", import.meta.url);

/** Options for {@linkcode WorkerPool.start}. Every field has a default. */
export interface WorkerPoolOptions {
  /**
   * Workers, each running one request at a time. CPU-bound work runs no
   * faster with more workers than cores: they would only share the same
   * cores, so each request takes longer and none finishes sooner. The
   * server's own thread needs little CPU (the operating system still
   * schedules it, for its heartbeats, while every core computes).
   *
   * @default {navigator.hardwareConcurrency}
   */
  workers?: number;
  /**
   * How long, in ms, a worker whose call's signal aborted gets to return
   * before it is terminated and replaced.
   *
   * @default {DEFAULT_ABORT_GRACE_MS}
   */
  abortGrace?: number;
  /**
   * The longest, in ms, a call may compute without yielding: V8 stops it
   * then, and the call fails with a `TimeoutError`. A call whose context
   * has a `deadline` is also stopped `abortGrace / 2` ms after it. Set it
   * to the server's `handlerTimeout`. Only the handler's synchronous part
   * (up to its first `await`) can be stopped so.
   *
   * @default {undefined} (none but the deadline)
   */
  timeLimit?: number;
  /**
   * Where the pool's log lines go (a worker replaced, and why); `null`
   * silences them.
   *
   * @default {console.log}
   */
  log?: ((line: string) => void) | null;
}

/**
 * A pool of Deno Workers that run a handler module's function off the
 * event loop. Give its {@linkcode WorkerPool.handler} to a server: the
 * server's connection keeps its heartbeats while the workers compute.
 *
 * The handler module exports a default function (or one named `handler`)
 * `(request: Uint8Array, context) => Reply | Promise<Reply>`. It gets a
 * copy of the request's bytes and the context's fields, with a signal of
 * its own that aborts when the server's does. A handler that never
 * yields cannot notice a signal: V8 stops it `abortGrace / 2` ms past
 * the call's `deadline`, or at `timeLimit`, and the worker goes on. A
 * worker that has still not returned `abortGrace` ms after the signal is
 * terminated and replaced: a runaway handler costs a worker, never the
 * server (but Deno 2.9 cannot stop a thread that does not yield: it runs
 * on until the handler returns; give calls a deadline or `timeLimit`). A
 * worker that dies (an uncaught error, `close()`, `Deno.exit()`) is
 * replaced too; its call fails with one line. Calls wait in the pool
 * while every worker is busy.
 *
 * Workers inherit the permissions of the process (Deno's default); a
 * handler module on disk needs `--allow-read` for it and for this
 * module's worker code.
 *
 * @example
 * ```ts
 * import { RpcServer, WorkerPool } from "./mod.ts";
 *
 * // my_handler.ts: export default (request: Uint8Array) => slowFunction(request);
 * await using pool = await WorkerPool.start(new URL("./my_handler.ts", import.meta.url));
 * await using server = await RpcServer.start({ queue: "slow", handler: pool.handler });
 * ```
 */
export class WorkerPool implements AsyncDisposable {
  /** The handler module's URL. */
  readonly module: string;
  /** How many workers it runs. */
  readonly size: number;
  /**
   * Runs one request in a worker: a {@linkcode Handler} for a server. The
   * context may be partial (a missing signal never aborts). Rejects with
   * the signal's reason when the context's signal aborts.
   */
  readonly handler: (request: Uint8Array, context?: Partial<RequestContext>) => Promise<Reply>;

  readonly #abortGrace: number;
  readonly #timeLimit?: number;
  readonly #log: ((line: string) => void) | null;
  readonly #slots: Slot[] = [];
  readonly #queue: Job[] = [];
  #nextId = 1;
  #replaced = 0;
  #closed = false;
  /** Why the last replacement failed to load, while none has loaded since. */
  #loadFailure?: string;
  #reloadDelay = RELOAD_FIRST_DELAY_MS;
  readonly #reloadTimers = new Set<ReturnType<typeof setTimeout>>();

  private constructor(module: string, options: WorkerPoolOptions) {
    this.module = module;
    this.size = options.workers ?? navigator.hardwareConcurrency;
    if (!Number.isInteger(this.size) || this.size < 1) {
      throw new RangeError(`workers must be a whole number from 1, got ${options.workers}`);
    }
    this.#abortGrace = options.abortGrace ?? DEFAULT_ABORT_GRACE_MS;
    if (!(this.#abortGrace >= 0)) {
      throw new RangeError(`abortGrace must be 0 ms or more, got ${options.abortGrace}`);
    }
    this.#timeLimit = options.timeLimit;
    if (this.#timeLimit !== undefined && !(this.#timeLimit > 0)) {
      throw new RangeError(`timeLimit must be more than 0 ms, got ${options.timeLimit}`);
    }
    this.#log = options.log === undefined ? console.log : options.log;
    this.handler = (request, context) => this.#handle(request, context ?? {});
  }

  /**
   * Starts the workers and loads the handler module in each. Fails with one
   * line, and leaves no worker behind, if the module cannot be loaded or
   * exports no handler.
   *
   * @param moduleUrl The handler module: a URL (`new URL("./h.ts", import.meta.url)`), or a file path.
   * @throws {RangeError} for a bad `workers`, `abortGrace` or `timeLimit`.
   */
  static async start(
    moduleUrl: URL | string,
    options: WorkerPoolOptions = {},
  ): Promise<WorkerPool> {
    const pool = new WorkerPool(moduleHref(moduleUrl), options);
    const loads = Array.from({ length: pool.size }, () => pool.#spawn().loaded);
    try {
      await Promise.all(loads);
    } catch (error) {
      await pool.close();
      throw error;
    }
    return pool;
  }

  /** Workers replaced so far: after a crash, or after an aborted call outlived its grace. */
  get replaced(): number {
    return this.#replaced;
  }

  /** Calls waiting for a worker. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Starts a worker in a new slot, or in `replacing`'s place; `loaded` resolves when it has loaded the module. */
  #spawn(replacing?: Slot): { slot: Slot; loaded: Promise<void> } {
    const worker = new Worker(HOST, { name: `rpc handler: ${this.module}` });
    const slot: Slot = { worker, state: "loading" };
    if (replacing) this.#slots[this.#slots.indexOf(replacing)] = slot;
    else this.#slots.push(slot);
    const loaded = Promise.withResolvers<void>();
    const failed = (why: string) => {
      slot.state = "dead";
      worker.terminate();
      loaded.reject(new Error(`could not load the handler module ${this.module}: ${why}`));
    };
    worker.on("message", (data: FromWorker) => {
      if (slot.state === "loading" && data.type === "ready") {
        slot.state = "idle";
        loaded.resolve();
        this.#dispatch();
      } else if (slot.state === "loading") {
        failed(data.type === "load-failed" || data.type === "crashed" ? data.message : data.type);
      } else this.#onMessage(slot, data);
    });
    // What the worker could not say itself: its code cannot be read, it exited.
    const stopped = (why: string) => {
      if (slot.state === "loading") failed(why);
      else this.#onCrash(slot, why);
    };
    worker.on("error", (error: Error) => stopped(firstLine(String(error?.message))));
    worker.on("exit", (code: number) => stopped(`its worker exited (code ${code})`));
    worker.on("messageerror", () => stopped("a message from it could not be read"));
    worker.postMessage({ type: "load", module: this.module } satisfies ToWorker);
    return { slot, loaded: loaded.promise };
  }

  /** Replaces a dead worker; if the replacement cannot load, tries again later, less and less often. */
  #replace(dead: Slot): void {
    if (this.#closed || !this.#slots.includes(dead)) return;
    const { slot, loaded } = this.#spawn(dead);
    loaded.then(() => {
      this.#loadFailure = undefined;
      this.#reloadDelay = RELOAD_FIRST_DELAY_MS;
    }, (error: Error) => {
      if (this.#closed) return;
      this.#loadFailure = error.message;
      this.#log?.(` [!] ${error.message}; trying again in ${this.#reloadDelay / 1000} s`);
      if (!this.#slots.some(isLive)) this.#failQueued();
      const timer = setTimeout(() => {
        this.#reloadTimers.delete(timer);
        this.#replace(slot);
      }, this.#reloadDelay);
      this.#reloadTimers.add(timer);
      this.#reloadDelay = Math.min(this.#reloadDelay * 2, RELOAD_MAX_DELAY_MS);
    });
  }

  #handle(request: Uint8Array, context: Partial<RequestContext>): Promise<Reply> {
    if (this.#closed) return Promise.reject(new Error("the worker pool is closed"));
    const signal = context.signal;
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#loadFailure && !this.#slots.some(isLive)) {
      return Promise.reject(new Error(`no worker can run the handler: ${this.#loadFailure}`));
    }
    const { promise, resolve, reject } = Promise.withResolvers<Reply>();
    const job: Job = {
      id: this.#nextId++,
      request,
      context: workerContext(context),
      signal,
      resolve,
      reject,
      settled: false,
    };
    if (signal) {
      job.onAbort = () => this.#onAbort(job);
      signal.addEventListener("abort", job.onAbort, { once: true });
    }
    this.#queue.push(job);
    this.#dispatch();
    return promise;
  }

  /** How long a call starting now may compute without yielding, if anything limits it. */
  #limit(deadline: number | undefined): number | undefined {
    const untilDeadline = deadline === undefined
      ? Infinity
      : deadline - Date.now() + this.#abortGrace / 2;
    const limit = Math.min(untilDeadline, this.#timeLimit ?? Infinity);
    return limit === Infinity ? undefined : Math.max(1, limit);
  }

  /** Hands waiting calls to idle workers. */
  #dispatch(): void {
    for (const slot of this.#slots) {
      if (this.#queue.length === 0) return;
      if (slot.state === "idle") this.#send(slot, this.#queue.shift()!);
    }
  }

  /**
   * Sends a call to a worker: a copy of exactly the request's bytes,
   * transferred (the server's buffer may be a view into a larger one,
   * which must not be detached), and the context.
   */
  #send(slot: Slot, job: Job): void {
    slot.state = "busy";
    slot.job = job;
    job.limit = this.#limit(job.context.deadline);
    const post = (context: WorkerContext) => {
      const request = new Uint8Array(job.request);
      const message: ToWorker = { type: "call", id: job.id, request, context, limit: job.limit };
      slot.worker.postMessage(message, [request.buffer]);
    };
    try {
      post(job.context);
    } catch {
      post({ ...job.context, headers: cloneableHeaders(job.context.headers) });
    }
  }

  /** A call's reply or error, or the worker's last words. */
  #onMessage(slot: Slot, message: FromWorker): void {
    if (message.type === "crashed") return this.#onCrash(slot, message.message);
    if (message.type !== "result" && message.type !== "failed") return;
    if (slot.state === "dead") return;
    const job = slot.job;
    if (!job || job.id !== message.id) return;
    clearTimeout(slot.graceTimer);
    slot.job = undefined;
    slot.state = "idle";
    if (message.type === "result") this.#settle(job, () => job.resolve(message.reply));
    else this.#settle(job, () => job.reject(rebuildError(message.error)));
    this.#dispatch();
  }

  /** A worker died: its call fails with one line, and another worker takes its place. */
  #onCrash(slot: Slot, why: string): void {
    if (slot.state === "dead") return;
    slot.state = "dead";
    clearTimeout(slot.graceTimer);
    slot.worker.terminate();
    const job = slot.job;
    if (job) {
      const error = new Error(
        `the worker running the handler stopped: ${why}; a new worker takes its place`,
      );
      this.#settle(job, () => job.reject(error));
    }
    this.#log?.(` [!] A handler's worker stopped (${why}); starting another`);
    this.#replaced++;
    this.#replace(slot);
  }

  /**
   * The caller's signal aborted: the call rejects at once with its reason.
   * A queued call is dropped; a running one's worker is told, and
   * replaced if it has not returned within `abortGrace`.
   */
  #onAbort(job: Job): void {
    const reason = job.signal!.reason;
    this.#settle(job, () => job.reject(reason));
    const queued = this.#queue.indexOf(job);
    if (queued >= 0) return void this.#queue.splice(queued, 1);
    const slot = this.#slots.find((each) => each.job === job);
    if (!slot) return;
    const message: ToWorker = { type: "abort", id: job.id, reason: describeThrown(reason) };
    slot.worker.postMessage(message);
    slot.graceTimer = setTimeout(() => {
      if (slot.job !== job) return;
      this.#onCrash(
        slot,
        `its handler did not return within ${this.#abortGrace} ms of being aborted`,
      );
    }, this.#abortGrace);
  }

  /** Settles a call once, and stops listening to its signal. */
  #settle(job: Job, settle: () => void): void {
    if (job.settled) return;
    job.settled = true;
    if (job.onAbort) job.signal!.removeEventListener("abort", job.onAbort);
    settle();
  }

  /** Fails every waiting call: no worker can run them. */
  #failQueued(): void {
    const error = new Error(`no worker can run the handler: ${this.#loadFailure}`);
    for (const job of this.#queue.splice(0)) this.#settle(job, () => job.reject(error));
  }

  /**
   * Terminates every worker: waiting and running calls fail ("the worker
   * pool is closed"). Close the server first (it waits for its handlers):
   * `await using` does, for a pool declared first. Safe to call twice.
   */
  close(): Promise<void> {
    this.#closed = true;
    for (const timer of this.#reloadTimers) clearTimeout(timer);
    this.#reloadTimers.clear();
    const error = new Error("the worker pool is closed");
    for (const job of this.#queue.splice(0)) this.#settle(job, () => job.reject(error));
    for (const slot of this.#slots) {
      clearTimeout(slot.graceTimer);
      slot.state = "dead"; // before terminate(), whose exit event may come at once
      slot.worker.terminate();
      if (slot.job) this.#settle(slot.job, () => slot.job!.reject(error));
    }
    return Promise.resolve();
  }

  /** Closes the pool, as {@linkcode WorkerPool.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
