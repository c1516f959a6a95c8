/**
 * Contract-first JSON procedures: a {@linkcode Procedure} names a queue and,
 * optionally, a schema for its requests and one for its replies, any
 * [Standard Schema](https://standardschema.dev) validator (zod 4, valibot 1,
 * arktype 2). Both sides share it: `RpcServer.serve(procedure, handler)`
 * hands the handler the validated request, `client.invoke(procedure, value)`
 * resolves to the validated reply, and the types flow from the schemas.
 *
 * On the wire, requests and replies are JSON (UTF-8) with `content_type:
 * application/json`; the value sent is the caller's (or the handler's) as
 * given, and each side validates what it reads. The bytes API
 * (`client.call`, `RpcServer.start`) is unchanged beside it.
 *
 * @example A "sum" service and its caller, with a zod contract
 * ```ts
 * import { z } from "npm:zod@4.6.7";
 * import { procedure, RpcClient, RpcServer } from "./mod.ts";
 *
 * const sum = procedure("sum", {
 *   request: z.object({ numbers: z.array(z.number()) }),
 *   reply: z.object({ total: z.number() }),
 * });
 * await using server = await RpcServer.serve(sum, ({ numbers }) => ({
 *   total: numbers.reduce((a, b) => a + b, 0),
 * }));
 * await using client = await RpcClient.connect();
 * const { total } = await client.invoke(sum, { numbers: [1, 2, 3] }); // 6
 * ```
 *
 * @module
 */
import type { RequestContext } from "./context.ts";
import { BadRequestError, RpcError } from "./errors.ts";
import type { CallOptions, ServerOptions } from "./options.ts";
import {
  describeIssues,
  type InferInput,
  type InferOutput,
  type StandardSchemaV1,
} from "./_standard_schema.ts";
import type { RpcClient } from "./client.ts";
import { RpcServer } from "./server.ts";

/** The `content_type` of a procedure's requests and replies. */
export const JSON_CONTENT_TYPE = "application/json";

/**
 * One procedure's contract: its queue and the schemas of its requests and
 * replies. `Request` is what the handler gets, `Reply` what the caller
 * gets; `RequestInput` and `ReplyInput` what the caller and the handler
 * give (the same, unless a schema has defaults or transforms).
 *
 * @example
 * ```ts
 * const greet: Procedure<{ name: string }, { text: string }> = procedure("greet");
 * ```
 */
export interface Procedure<
  Request = unknown,
  Reply = unknown,
  RequestInput = Request,
  ReplyInput = Reply,
> {
  /** The request queue. */
  readonly queue: string;
  /** Validates requests (on both sides); none: typed JSON without run-time checks. */
  readonly request: StandardSchemaV1<RequestInput, Request> | undefined;
  /** Validates replies (on both sides); none: typed JSON without run-time checks. */
  readonly reply: StandardSchemaV1<ReplyInput, Reply> | undefined;
}

/** The schemas of {@linkcode procedure}: each optional. */
export interface ProcedureSchemas<
  RequestSchema extends StandardSchemaV1 | undefined,
  ReplySchema extends StandardSchemaV1 | undefined,
> {
  /** The requests' schema. Default: none (no check). */
  request?: RequestSchema;
  /** The replies' schema. Default: none (no check). */
  reply?: ReplySchema;
}

/**
 * The type a schema gives, or `unknown` without one.
 *
 * @example
 * ```ts
 * type Nothing = SchemaOutput<undefined>; // unknown
 * ```
 */
export type SchemaOutput<Schema> = Schema extends StandardSchemaV1 ? InferOutput<Schema> : unknown;

/**
 * The type a schema takes, or `unknown` without one.
 *
 * @example
 * ```ts
 * type Nothing = SchemaInput<undefined>; // unknown
 * ```
 */
export type SchemaInput<Schema> = Schema extends StandardSchemaV1 ? InferInput<Schema> : unknown;

/**
 * Defines a procedure: with schemas, checked at run time and typed from
 * them; with type arguments only, `procedure<Request, Reply>(queue)`,
 * typed JSON without run-time checks.
 *
 * @example
 * ```ts
 * import { procedure, type StandardSchemaV1 } from "./mod.ts";
 *
 * const echo = procedure<{ text: string }, { text: string }>("echo");
 * const positive: StandardSchemaV1<number> = {
 *   "~standard": {
 *     version: 1,
 *     vendor: "example",
 *     validate: (value) =>
 *       typeof value === "number" && value > 0 ? { value } : { issues: [{ message: "not > 0" }] },
 *   },
 * };
 * const half = procedure("half", { request: positive, reply: positive });
 * ```
 */
export function procedure<Request, Reply>(queue: string): Procedure<Request, Reply>;
/**
 * Defines a procedure whose requests and replies `schemas` check, typed
 * from them (either may be left out: `unknown`, unchecked).
 *
 * @example
 * ```ts
 * const anything = procedure("anything", {});
 * ```
 */
export function procedure<
  RequestSchema extends StandardSchemaV1 | undefined = undefined,
  ReplySchema extends StandardSchemaV1 | undefined = undefined,
>(
  queue: string,
  schemas: ProcedureSchemas<RequestSchema, ReplySchema>,
): Procedure<
  SchemaOutput<RequestSchema>,
  SchemaOutput<ReplySchema>,
  SchemaInput<RequestSchema>,
  SchemaInput<ReplySchema>
>;
export function procedure(
  queue: string,
  schemas: ProcedureSchemas<StandardSchemaV1 | undefined, StandardSchemaV1 | undefined> = {},
): Procedure {
  if (typeof queue !== "string" || !queue) {
    throw new TypeError("queue must be a non-empty queue name");
  }
  for (const [side, schema] of Object.entries(schemas)) {
    if (schema !== undefined && typeof schema?.["~standard"]?.validate !== "function") {
      throw new TypeError(`${side} must be a Standard Schema (zod 4, valibot 1, arktype 2, ...)`);
    }
  }
  return Object.freeze({ queue, request: schemas.request, reply: schemas.reply });
}

/** A procedure's handler: the validated request and its context in, the reply's value out. */
export type ProcedureHandler<Request, ReplyInput> = (
  request: Request,
  context: RequestContext,
) => ReplyInput | Promise<ReplyInput>;

/** Options of {@linkcode RpcServer.serve}: those of {@linkcode RpcServer.start} but the queue, handler and reply content type. */
export type ProcedureServerOptions = Omit<ServerOptions, "queue" | "handler" | "contentType">;

/**
 * Validates `value` with `schema`; on failure throws what `refuse` makes of
 * the issues' one-line description.
 */
async function check<T>(
  schema: StandardSchemaV1<unknown, T>,
  value: unknown,
  refuse: (issues: string) => Error,
): Promise<T> {
  const result = await schema["~standard"].validate(value);
  if (result.issues) throw refuse(describeIssues(result.issues));
  return result.value;
}

/** A value as JSON bytes; `undefined` as `null`. */
function toJson(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value) ?? "null");
}

/** JSON bytes (UTF-8) as a value; on failure throws what `refuse` makes of the parser's word. */
function fromJson(bytes: Uint8Array, refuse: (why: string, cause: unknown) => Error): unknown {
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (cause) {
    throw refuse((cause as Error).message, cause);
  }
}

/** An RpcError with a cause. */
function rpcError(code: string, message: string, cause?: unknown): RpcError {
  const error = new RpcError(code, message);
  if (cause !== undefined) error.cause = cause;
  return error;
}

/**
 * The server side of {@linkcode RpcServer.serve}: a bytes handler that
 * reads the request as JSON, validates it (refusing it with
 * `BadRequestError`, saying where and why), runs `handler`, validates its
 * reply and sends it as JSON.
 */
export function serveProcedure<Request, Reply, RequestInput, ReplyInput>(
  contract: Procedure<Request, Reply, RequestInput, ReplyInput>,
  handler: ProcedureHandler<Request, ReplyInput>,
  options: ProcedureServerOptions = {},
): Promise<RpcServer> {
  if (typeof handler !== "function") throw new TypeError("handler must be a function");
  const { request: requestSchema, reply: replySchema } = contract;
  return RpcServer.start({
    ...options,
    queue: contract.queue,
    contentType: JSON_CONTENT_TYPE,
    handler: async (bytes, context) => {
      const parsed = fromJson(
        bytes,
        (why, cause) => new BadRequestError(`the request is not JSON: ${why}`, { cause }),
      );
      const value = requestSchema
        ? await check(
          requestSchema,
          parsed,
          (why) => new BadRequestError(`invalid request: ${why}`),
        )
        : parsed as Request;
      const reply = await handler(value, context);
      if (replySchema) {
        await check(
          replySchema,
          reply,
          // The server's own bug: its caller gets `internal`, its log the detail.
          (why) => new Error(`the handler's reply breaks the contract: ${why}`),
        );
      }
      return toJson(reply);
    },
  });
}

/**
 * The client side of `client.invoke`: validates the request (refusing it
 * before sending, with `bad-request`), sends it as JSON, and validates the
 * reply (a reply that breaks the contract fails with `bad-reply`).
 */
export async function invokeProcedure<Request, Reply, RequestInput, ReplyInput>(
  client: RpcClient,
  contract: Procedure<Request, Reply, RequestInput, ReplyInput>,
  value: RequestInput,
  options: CallOptions = {},
): Promise<Reply> {
  const label = options.label ?? `call to "${contract.queue}"`;
  if (contract.request) {
    await check(
      contract.request,
      value,
      (why) => rpcError("bad-request", `${label}: invalid request: ${why}`),
    );
  }
  let body: Uint8Array;
  try {
    body = toJson(value);
  } catch (cause) {
    throw rpcError(
      "bad-request",
      `${label}: the request is not JSON: ${(cause as Error).message}`,
      cause,
    );
  }
  const bytes = await client.call(contract.queue, body, {
    ...options,
    contentType: JSON_CONTENT_TYPE,
  });
  const reply = fromJson(
    bytes,
    (why, cause) => rpcError("bad-reply", `${label}: the reply is not JSON: ${why}`, cause),
  );
  if (!contract.reply) return reply as Reply;
  return await check(
    contract.reply,
    reply,
    (why) => rpcError("bad-reply", `${label}: the reply breaks the contract: ${why}`),
  );
}
