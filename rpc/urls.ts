/**
 * Broker URLs: reading one or several, and printing them without their
 * passwords.
 *
 * @module
 */

/** The broker URL when neither the options nor `$AMQP_URL` name one. */
export const DEFAULT_URL = "amqp://localhost";

/**
 * Reads one or more broker URLs: a list, or one string with commas between
 * URLs (as `AMQP_URL` may hold). `what` names the source in the error.
 *
 * @example
 * ```ts
 * parseBrokerUrls("amqp://a:5672,amqp://b:5672", "AMQP_URL").length; // 2
 * ```
 * @throws {TypeError} one line naming the bad entry, with any password hidden.
 */
export function parseBrokerUrls(value: string | readonly string[], what: string): URL[] {
  const entries = (typeof value === "string" ? [value] : value).flatMap((entry) => entry.split(","))
    .map((entry) => entry.trim());
  if (entries.length === 0 || entries.some((entry) => entry === "")) {
    throw new TypeError(`${what} must list one or more amqp:// URLs, separated by commas`);
  }
  return entries.map((entry, index) => {
    const url = URL.canParse(entry) ? new URL(entry) : undefined;
    if (!url || !/^amqps?:$/.test(url.protocol) || !url.hostname) {
      const which = entries.length > 1 ? ` (entry ${index + 1} of ${entries.length})` : "";
      throw new TypeError(
        `${what}${which} must be an amqp:// or amqps:// URL with a host, got "${
          hidePassword(entry)
        }"`,
      );
    }
    return url;
  });
}

/**
 * The broker URLs a server or client uses: the option if given, else
 * `$AMQP_URL`, else {@linkcode DEFAULT_URL}.
 *
 * @example
 * ```ts
 * brokerUrls(undefined); // [new URL("amqp://localhost")] when AMQP_URL is unset
 * ```
 */
export function brokerUrls(option: string | readonly string[] | undefined): URL[] {
  if (option !== undefined) return parseBrokerUrls(option, "the broker URL");
  return parseBrokerUrls(Deno.env.get("AMQP_URL") ?? DEFAULT_URL, "AMQP_URL");
}

/**
 * The URL with its password replaced by `***`, fit for logs and errors.
 *
 * @example
 * ```ts
 * redact(new URL("amqp://guest:secret@host")); // "amqp://guest:***@host"
 * ```
 */
export function redact(url: URL): string {
  if (!url.password) return url.href;
  const copy = new URL(url);
  copy.password = "***";
  return copy.href;
}

/**
 * Text the user typed, fit to print: a URL's password becomes `***`; in
 * anything else, whatever lies between the first `:` and the last `@`
 * (where a mistyped URL keeps its password) does.
 *
 * @example
 * ```ts
 * hidePassword("amqp//guest:secret@host"); // "amqp//guest:***@host"
 * ```
 */
export function hidePassword(text: string): string {
  if (URL.canParse(text) && new URL(text).password) return redact(new URL(text));
  return text.replace(/:.*@/s, ":***@");
}

/**
 * The user name every one of `urls` logs in as, or undefined if they
 * differ or one is not known: RabbitMQ refuses a publish whose `user_id`
 * is not the connection's user (closing the channel), so a client sends
 * one only when it is sure. A URL without credentials logs in as guest
 * (amqplib's default) over `amqp:`; over `amqps:` it may log in with its
 * client certificate (SASL EXTERNAL), whose user only the broker knows.
 *
 * @example
 * ```ts
 * loginUser([new URL("amqp://localhost")]); // "guest"
 * loginUser([new URL("amqps://broker")]); // undefined
 * ```
 */
export function loginUser(urls: readonly URL[]): string | undefined {
  const users = new Set(urls.map((url) => {
    if (url.username || url.password) return decodeURIComponent(url.username);
    return url.protocol === "amqp:" ? "guest" : undefined;
  }));
  return users.size === 1 ? [...users][0] : undefined;
}
