/**
 * What the command lines share: reading options, and saying what went
 * wrong in one line, with passwords hidden.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { DEFAULT_URL, hidePassword, parseBrokerUrls } from "./_urls.ts";
import { checkKeyPair, type TlsOptions } from "./_tls.ts";

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
 * const read = (args: string[]) => args.includes("--help") ? "help" : { verbose: args.length > 0 };
 * const options = readOrExit("my_tool", Deno.args, read, "Usage: my_tool [--verbose]");
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

/** The TLS options both command lines take, for {@linkcode parseCommandLine}. */
export const TLS_OPTIONS = {
  cacert: { type: "string" },
  cert: { type: "string" },
  key: { type: "string" },
} as const;

/** The environment variables that stand in for `--cacert`, `--cert` and `--key`. */
export const TLS_ENVIRONMENT = { cacert: "AMQP_CACERT", cert: "AMQP_CERT", key: "AMQP_KEY" };

/** The environment variable holding the passphrase of an encrypted `--key` (never a flag: `ps` shows flags). */
export const KEY_PASSPHRASE_ENVIRONMENT = "AMQP_KEY_PASSPHRASE";

/** The lines of --help about TLS and permissions, shared by both command lines. */
export const TLS_USAGE = `TLS (amqps:// URLs only; PEM files, as curl names them):
  --cacert FILE    CA certificate(s) the broker's certificate is signed by
                   (default: $AMQP_CACERT, else the system's CAs)
  --cert FILE      client certificate, for brokers that require one
                   (default: $AMQP_CERT); goes with --key
  --key FILE       the client certificate's private key (default: $AMQP_KEY;
                   if encrypted, its passphrase in $AMQP_KEY_PASSPHRASE)
  With ?auth_mechanism=external in the URL, the client certificate is the
  login (SASL EXTERNAL) instead of a user name and password.

Permissions: --allow-net --allow-env are enough, and may be scoped, e.g.
  --allow-net=broker:5671 --allow-env=AMQP_URL,AMQP_CACERT,AMQP_CERT,AMQP_KEY,
  AMQP_KEY_PASSPHRASE, plus --allow-read=FILE,... for the certificate files.`;

/**
 * The `tls` option from `--cacert`, `--cert`, `--key` (else `$AMQP_CACERT`,
 * `$AMQP_CERT`, `$AMQP_KEY`): the files' PEM text, or undefined if none is
 * given.
 *
 * @example
 * ```ts
 * tlsFromCommandLine({ cacert: "ca.pem" }, ["amqps://broker"]); // { ca: "-----BEGIN ..." }
 * ```
 * @throws {UsageError} for a cert without a key (or the reverse), a file
 *   that cannot be read or holds no PEM, or TLS files with an `amqp://` URL.
 */
export function tlsFromCommandLine(
  values: Record<string, unknown>,
  urls: string[],
): TlsOptions | undefined {
  const given = (name: keyof typeof TLS_ENVIRONMENT) => {
    const file = values[name] as string | undefined;
    if (file !== undefined) return { file, what: `--${name}` };
    const fromEnvironment = environment(TLS_ENVIRONMENT[name]);
    return fromEnvironment ? { file: fromEnvironment, what: TLS_ENVIRONMENT[name] } : undefined;
  };
  const [cacert, cert, key] = [given("cacert"), given("cert"), given("key")];
  if (!cacert && !cert && !key) return undefined;
  if (!cert !== !key) {
    const [has, lacks] = cert ? [cert.what, "--key"] : [key!.what, "--cert"];
    throw new UsageError(`${has} needs ${lacks} too: a client certificate goes with its key`);
  }
  const plain = urls.find((url) => !url.startsWith("amqps:"));
  if (plain) {
    const what = [cacert, cert, key].filter((option) => option).map((option) => option!.what);
    const verb = what.length === 1 ? "needs" : "need";
    throw new UsageError(`${what.join(", ")} ${verb} amqps:// URLs, got "${hidePassword(plain)}"`);
  }
  const tls = {
    ca: readPem(cacert),
    cert: readPem(cert),
    key: readPem(key),
    passphrase: environment(KEY_PASSPHRASE_ENVIRONMENT),
  };
  try {
    const names = { cert: cert?.what ?? "--cert", key: key?.what ?? "--key" };
    checkKeyPair(tls, { ...names, passphrase: KEY_PASSPHRASE_ENVIRONMENT });
  } catch (error) {
    throw new UsageError((error as Error).message, { cause: error });
  }
  return tls;
}

/** An environment variable, or undefined if it is unset or not allowed (--allow-env scoped without it). */
function environment(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable) return undefined;
    throw error;
  }
}

/** The PEM text of a file named on the command line; a UsageError if it cannot be read or is not PEM. */
function readPem(option: { file: string; what: string } | undefined): string | undefined {
  if (!option) return undefined;
  const { file, what } = option;
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch (error) {
    const why = error instanceof Deno.errors.NotCapable
      ? `not allowed to read it: run with --allow-read=${file}`
      : error instanceof Deno.errors.NotFound
      ? "no such file"
      : (error as Error).message.split("\n")[0];
    throw new UsageError(`cannot read ${what} "${file}": ${why}`, { cause: error });
  }
  if (!text.includes("-----BEGIN ")) {
    throw new UsageError(`${what} "${file}" holds no PEM text (-----BEGIN ...)`);
  }
  return text;
}
