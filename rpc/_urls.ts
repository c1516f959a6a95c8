/**
 * Broker URLs: reading one or several, and printing them without their
 * passwords.
 *
 * @module
 */
import { loginMechanism } from "./_tls.ts";

/** The broker URL when neither the options nor `$AMQP_URL` name one. */
export const DEFAULT_URL = "amqp://localhost";

/** Where a list of URLs splits: at a comma before a new `amqp://` or `amqps://`, and nowhere else. */
const URL_LIST_SEPARATOR = /,(?=\s*amqps?:\/\/)/i;

/**
 * Reads one or more broker URLs: a list, or one string with commas between
 * URLs (as `AMQP_URL` may hold). A list splits only where a new `amqp://`
 * or `amqps://` begins, so a password may hold commas. `what` names the
 * source in the error.
 *
 * @example
 * ```ts
 * parseBrokerUrls("amqp://a:5672,amqp://b:5672", "AMQP_URL").length; // 2
 * parseBrokerUrls("amqp://guest:1234,5678@a", "AMQP_URL").length; // 1
 * ```
 * @throws {TypeError} one line naming the bad entry, showing no more of
 *   it than its scheme and host, lest it hold a password.
 */
export function parseBrokerUrls(value: string | readonly string[], what: string): URL[] {
  const entries = (typeof value === "string" ? [value] : value)
    .flatMap((entry) => entry.split(URL_LIST_SEPARATOR))
    .map((entry) => entry.trim());
  const empty = (entry: string) => entry === "" || entry.startsWith(",") || entry.endsWith(",");
  if (entries.length === 0 || entries.some(empty)) {
    throw new TypeError(`${what} must list one or more amqp:// URLs, separated by commas`);
  }
  return entries.map((entry, index) => {
    const url = URL.canParse(entry) ? new URL(entry) : undefined;
    if (!url || !/^amqps?:$/.test(url.protocol) || !isClean(url)) {
      const which = entries.length > 1 ? ` (entry ${index + 1} of ${entries.length})` : "";
      const amqp = !url || /^amqps?:$/.test(url.protocol);
      const hint = amqp && entry.includes("@")
        ? " (in a password, / ? # @ must be percent-encoded)"
        : "";
      throw new TypeError(
        `${what}${which} must be an amqp:// or amqps:// URL with a host${hint}, ` +
          `got "${hidePassword(entry)}"`,
      );
    }
    return url;
  });
}

/**
 * Whether a parsed URL is what its writer meant: it has a host, and no `@`
 * after it nor any `#`, which are signs of a password that was not
 * percent-encoded and now sits in the path, query or fragment.
 */
function isClean(url: URL): boolean {
  return url.hostname !== "" && !url.hostname.includes(",") && url.hash === "" &&
    !(url.pathname + url.search).includes("@");
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
  if (!isClean(url)) return hidePassword(url.href);
  if (!url.password) return url.href;
  const copy = new URL(url);
  copy.password = "***";
  return copy.href;
}

/**
 * Text the user typed, fit to print. Text in which no password can hide
 * (no `@`) is shown as it is; a clean URL (see `isClean`) with its
 * password replaced by `***`; anything else is hidden but for what comes
 * before its first `:` (an option's name, a URL's scheme).
 *
 * @example
 * ```ts
 * hidePassword("amqp://guest:secret@host"); // "amqp://guest:***@host"
 * hidePassword("amqp//guest:secret@host"); // "amqp//guest:…"
 * hidePassword("amqp://guest:se/cret@host"); // "amqp://…"
 * ```
 */
export function hidePassword(text: string): string {
  if (!text.includes("@")) return text; // a URL's password always comes before an @
  if (URL.canParse(text)) {
    const url = new URL(text);
    if (isClean(url)) return url.password ? redact(url) : text;
  }
  const colon = text.indexOf(":");
  if (colon < 0) return "…";
  return text.slice(0, colon + 1) + (text.startsWith("//", colon + 1) ? "//…" : "…");
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
 * loginUser([new URL("amqps://app:pw@broker?auth_mechanism=external")]); // undefined
 * ```
 */
export function loginUser(urls: readonly URL[]): string | undefined {
  const users = new Set(urls.map((url) => {
    // SASL EXTERNAL: the client certificate is the login, whatever the URL's user says.
    if (loginMechanism(url) === "external") return undefined;
    if (url.username || url.password) return decodeURIComponent(url.username);
    return url.protocol === "amqp:" ? "guest" : undefined;
  }));
  return users.size === 1 ? [...users][0] : undefined;
}
