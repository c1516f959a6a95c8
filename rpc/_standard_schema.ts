/**
 * The few types of the Standard Schema interface, version 1
 * (https://standardschema.dev), written out here so that the library
 * depends on no validation library: zod 4, valibot 1 and arktype 2
 * schemas all fit them as they are.
 *
 * @module
 */

/**
 * A validator of any library that implements Standard Schema v1: it
 * validates unknown input to an `Output`, and names its types.
 *
 * @example
 * ```ts
 * const positive: StandardSchemaV1<number> = {
 *   "~standard": {
 *     version: 1,
 *     vendor: "example",
 *     validate: (value) =>
 *       typeof value === "number" && value > 0
 *         ? { value }
 *         : { issues: [{ message: "expected a positive number" }] },
 *   },
 * };
 * ```
 */
export interface StandardSchemaV1<Input = unknown, Output = Input> {
  /** The Standard Schema properties. */
  readonly "~standard": StandardSchemaProps<Input, Output>;
}

/** The properties of a Standard Schema: see {@linkcode StandardSchemaV1}. */
export interface StandardSchemaProps<Input = unknown, Output = Input> {
  /** The version of the standard: 1. */
  readonly version: 1;
  /** The name of the schema's library (`"zod"`, `"valibot"`, ...). */
  readonly vendor: string;
  /** Validates an unknown value: its typed value, or the issues found; possibly async. */
  readonly validate: (
    value: unknown,
  ) => StandardResult<Output> | Promise<StandardResult<Output>>;
  /** The schema's input and output types, for inference only (never read at run time). */
  readonly types?: StandardTypes<Input, Output> | undefined;
}

/** What `validate` gives: the value, or the issues. */
export type StandardResult<Output> = StandardSuccess<Output> | StandardFailure;

/** A valid value. */
export interface StandardSuccess<Output> {
  /** The typed value (it may differ from the input: defaults, coercions). */
  readonly value: Output;
  /** None. */
  readonly issues?: undefined;
}

/** An invalid value. */
export interface StandardFailure {
  /** What is wrong, and where. */
  readonly issues: ReadonlyArray<StandardIssue>;
}

/** One thing wrong with a value. */
export interface StandardIssue {
  /** The schema's message. */
  readonly message: string;
  /** Where in the value: keys, or segments holding a key. */
  readonly path?: ReadonlyArray<PropertyKey | { readonly key: PropertyKey }> | undefined;
}

/** The types a schema names, for inference. */
export interface StandardTypes<Input = unknown, Output = Input> {
  /** The type it takes. */
  readonly input: Input;
  /** The type it gives. */
  readonly output: Output;
}

/** The type a schema takes. */
export type InferInput<Schema extends StandardSchemaV1> = NonNullable<
  Schema["~standard"]["types"]
>["input"];

/** The type a schema gives. */
export type InferOutput<Schema extends StandardSchemaV1> = NonNullable<
  Schema["~standard"]["types"]
>["output"];

/**
 * The issues as one line: `path: message` for each, `; ` between them
 * (`(root)` for an issue of the value itself).
 *
 * @example
 * ```ts
 * describeIssues([{ message: "Expected number", path: ["a", { key: 0 }] }]); // "a[0]: Expected number"
 * ```
 */
export function describeIssues(issues: ReadonlyArray<StandardIssue>): string {
  return issues.map((issue) => `${issuePath(issue)}: ${issue.message}`).join("; ");
}

/** `a.b[0]`, or `(root)`. */
function issuePath(issue: StandardIssue): string {
  let text = "";
  for (const segment of issue.path ?? []) {
    const key = typeof segment === "object" && segment !== null ? segment.key : segment;
    if (typeof key === "number") text += `[${key}]`;
    else text += text ? `.${String(key)}` : String(key);
  }
  return text || "(root)";
}
