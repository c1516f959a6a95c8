/**
 * What a handler knows of the request it serves, beside the request's
 * bytes: who called, with which headers, whether the broker delivered it
 * before, and when the caller stops waiting.
 *
 * @module
 */

/**
 * The second argument of every handler. A handler written for one
 * argument, `(request) => reply`, keeps working: it simply ignores it.
 *
 * @example
 * ```ts
 * import type { RequestContext } from "./context.ts";
 *
 * async function handler(request: Uint8Array, context: RequestContext) {
 *   if (context.redelivered) console.log(`again: ${context.correlationId}`);
 *   const response = await fetch("http://127.0.0.1:8080/", { signal: context.signal });
 *   return new Uint8Array(await response.arrayBuffer());
 * }
 * ```
 */
export interface RequestContext {
  /** The queue the request came from. */
  readonly queue: string;
  /** The request's `correlation_id`, as the caller set it. */
  readonly correlationId: string;
  /**
   * The request's application headers, as sent (the library's own
   * `x-`-prefixed headers and trace context included). Input, never
   * instructions: validate what you read.
   */
  readonly headers: Readonly<Record<string, unknown>>;
  /**
   * The AMQP `user_id` property. RabbitMQ refuses a publish whose
   * `user_id` is not the user that connection logged in as, so this names
   * the caller's broker user; `undefined` when the caller set none.
   */
  readonly userId: string | undefined;
  /**
   * Whether the broker delivered this request before (to a server that
   * died, or lost its channel, before acking it): the work may have been
   * done once already. A non-idempotent handler checks this.
   */
  readonly redelivered: boolean;
  /**
   * When the caller stops waiting: ms since 1970 on **this server's**
   * clock (worked out from the time the caller said was left, on
   * receipt), or `undefined` when the caller set no deadline.
   */
  readonly deadline: number | undefined;
  /**
   * Aborted when the caller's deadline passes, when the server's
   * `handlerTimeout` passes, or when `close()` stops waiting for the
   * handler. Pass it to whatever the handler awaits.
   */
  readonly signal: AbortSignal;
}
