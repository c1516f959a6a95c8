/**
 * A handler module for workers_test.ts, run in a {@linkcode WorkerPool}'s
 * workers. The request's text says what to do:
 * - `spin MS`: computes for MS ms without yielding once, then replies
 *   with `WORKER START END` (this worker's id and the times, in ms since
 *   1970);
 * - `spin-forever`: computes and never returns;
 * - `wait-for-abort`: waits until its signal aborts, then throws;
 * - `context`: replies with the context it got, as JSON;
 * - `echo …`: replies with the request's bytes, as they came;
 * - `throw KIND`: throws a null-prototype object, a string, a symbol, a
 *   function, a TypeError, an RpcError or a BadRequestError;
 * - `return-object`: returns something that is not a reply;
 * - `crash`, `close`, `exit`: ends its worker (an uncaught error later,
 *   `close()`, `Deno.exit(1)`);
 * - anything else: replies with `worker WORKER`.
 *
 * @module
 */
import type { RequestContext } from "./context.ts";
import { BadRequestError, RpcError } from "./errors.ts";

/** This worker's id: each worker loads the module once. */
const worker = crypto.randomUUID().slice(0, 8);

/** Computes for `ms` ms without yielding. */
function spin(ms: number): void {
  const end = Date.now() + ms;
  let x = 0;
  while (Date.now() < end) x = (x * 31 + 7) % 1_000_003;
}

const throws: Record<string, () => never> = {
  "null-prototype": () => {
    throw Object.create(null);
  },
  string: () => {
    throw "a string";
  },
  symbol: () => {
    throw Symbol("odd");
  },
  function: () => {
    throw () => 1;
  },
  "type-error": () => {
    throw new TypeError("bad type");
  },
  rpc: () => {
    throw new RpcError("my-code", "refused on purpose");
  },
  "bad-request": () => {
    throw new BadRequestError("cannot read that");
  },
};

/** The handler: see the module's doc. */
export default async function handler(
  request: Uint8Array,
  context: RequestContext,
): Promise<Uint8Array | string> {
  const [what, argument] = new TextDecoder().decode(request).split(" ");
  if (what === "spin") {
    const start = Date.now();
    spin(Number(argument));
    return `${worker} ${start} ${Date.now()}`;
  }
  if (what === "spin-forever") { for (;;) spin(1_000); }
  if (what === "wait-for-abort") {
    await new Promise((resolve) => context.signal.addEventListener("abort", resolve));
    throw context.signal.reason;
  }
  if (what === "echo") return request;
  if (what === "context") {
    const { signal, ...fields } = context;
    return JSON.stringify({ ...fields, signal: signal instanceof AbortSignal });
  }
  if (what === "throw") throws[argument]();
  if (what === "return-object") return {} as string; // not a reply, on purpose
  if (what === "crash") {
    setTimeout(() => {
      throw new Error("crashed on purpose");
    });
    return await new Promise(() => {});
  }
  if (what === "close") close();
  if (what === "exit") Deno.exit(1);
  return `worker ${worker}`;
}
