/**
 * What the command lines share: reading options, and saying what went
 * wrong in one line, with passwords hidden.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { DEFAULT_URL, hidePassword, parseBrokerUrls } from "./urls.ts";

/** A mistake in the command line: one line, then exit 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/**
 * parseArgs, strict, with its complaints made fit to print: a URL in what
 * it quotes has its password hidden, and Node's advice about '--' (whose
 * quotes do not balance) is left out.
 *
 * @example
 * ```ts
 * const { values } = parseCommandLine(Deno.args, { quiet: { type: "boolean" } });
 * ```
 * @throws {UsageError} for an unknown option, a missing value, or a stray argument.
 */
export function parseCommandLine<Options extends NonNullable<ParseArgsConfig["options"]>>(
  args: string[],
  options: Options,
  allowPositionals = false,
): { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] } {
  try {
    return parseArgs({ args, options, allowPositionals, strict: true });
  } catch (error) {
    const message = (error as Error).message.replace(/\. To specify a positional argument.*$/s, "");
    throw new UsageError(
      args.reduce((text, arg) => text.replaceAll(arg, hidePassword(arg)), message),
    );
  }
}

/**
 * The broker URLs of `--url` (repeatable), else `$AMQP_URL` (commas between
 * URLs), else `amqp://localhost`, as hrefs.
 *
 * @example
 * ```ts
 * urlsFromCommandLine(["amqp://a", "amqp://b"]); // ["amqp://a", "amqp://b"]
 * ```
 * @throws {UsageError} naming the bad entry, with its password hidden.
 */
export function urlsFromCommandLine(urls: string[] | undefined): string[] {
  try {
    const parsed = urls
      ? parseBrokerUrls(urls, "--url")
      : parseBrokerUrls(Deno.env.get("AMQP_URL") ?? DEFAULT_URL, "AMQP_URL");
    return parsed.map((url) => url.href);
  } catch (error) {
    if (error instanceof TypeError) throw new UsageError(error.message);
    throw error;
  }
}

/**
 * A whole number from the command line, checked against `rule`.
 *
 * @example
 * ```ts
 * wholeNumber("--timeout", "5000", (n) => n >= 1, "a positive whole number of ms"); // 5000
 * ```
 * @throws {UsageError} `--name must be RULE, got "TEXT"`, with any password hidden.
 */
export function wholeNumber(
  name: string,
  text: string,
  check: (n: number) => boolean,
  rule: string,
): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || !check(n)) {
    throw new UsageError(`${name} must be ${rule}, got "${hidePassword(text)}"`);
  }
  return n;
}

/**
 * One of a few words from the command line.
 *
 * @example
 * ```ts
 * oneOf("--queue-type", "classic", ["quorum", "classic"]); // "classic"
 * ```
 * @throws {UsageError} `--name must be "a" or "b", got "TEXT"`.
 */
export function oneOf<const Word extends string>(
  name: string,
  text: string,
  words: readonly Word[],
): Word {
  if ((words as readonly string[]).includes(text)) return text as Word;
  const choices = words.map((word) => `"${word}"`).join(" or ");
  throw new UsageError(`${name} must be ${choices}, got "${hidePassword(text)}"`);
}

/**
 * Ends the program over an error, in one line: a usage error (exit 2, with
 * a pointer to --help), a missing permission or anything else (exit 1).
 *
 * @example
 * ```ts
 * fail("fib_client", new UsageError("give at least one number")); // exits 2
 * ```
 */
export function fail(program: string, error: unknown): never {
  const usage = error instanceof UsageError;
  console.error(`${program}: ${(error as Error).message}${usage ? " (see --help)" : ""}`);
  Deno.exit(usage ? 2 : 1);
}

/**
 * The command line read by `read`, or the end of the program: `--help`
 * prints `usage` (exit 0), bad input one line (exit 2, see {@linkcode fail}).
 *
 * @example
 * ```ts
 * const options = readOrExit("fib_server", Deno.args, readCommandLine, USAGE);
 * ```
 */
export function readOrExit<T>(
  program: string,
  args: string[],
  read: (args: string[]) => T | "help",
  usage: string,
): T {
  let result: T | "help";
  try {
    result = read(args);
  } catch (error) {
    fail(program, error);
  }
  if (result === "help") {
    console.log(usage);
    Deno.exit(0);
  }
  return result;
}
