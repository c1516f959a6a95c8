/**
 * TLS and login for `amqps://` brokers: the certificates a connection
 * presents and trusts, SASL EXTERNAL (logging in with the client
 * certificate), and one line saying what went wrong with TLS and what to
 * pass instead.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createPrivateKey, createPublicKey, type KeyObject, X509Certificate } from "node:crypto";
import amqp from "npm:amqplib@2.3.1";
import type { SocketOptions } from "npm:amqplib@2.3.1";

/**
 * TLS settings for `amqps://` URLs, as PEM text (not file names). Without
 * them, `amqps://` trusts the system's CAs and presents no certificate.
 *
 * @example
 * ```ts
 * const tls: TlsOptions = {
 *   ca: await Deno.readTextFile("ca.pem"),
 *   cert: await Deno.readTextFile("client.pem"),
 *   key: await Deno.readTextFile("client.key"),
 * };
 * ```
 */
export interface TlsOptions {
  /** The CA certificate(s) that signed the broker's certificate. Default: the system's CAs. */
  ca?: string;
  /** The client certificate, for brokers that require one (mutual TLS). Needs `key`. Default: none. */
  cert?: string;
  /** The private key of `cert`. Default: none. */
  key?: string;
  /** The passphrase of an encrypted `key`. Default: none. */
  passphrase?: string;
  /** The name the broker's certificate must hold. Default: the URL's host name. */
  servername?: string;
}

/** The URL query parameter choosing the login mechanism, as in RabbitMQ's AMQP URI spec. */
export const AUTH_MECHANISM_PARAMETER = "auth_mechanism";

/**
 * The socket options of a connection to `urls`: the TLS settings, and SASL
 * EXTERNAL when every URL asks for it (`?auth_mechanism=external`).
 *
 * @example
 * ```ts
 * tlsSocketOptions([new URL("amqps://broker?auth_mechanism=external")], undefined);
 * // { credentials: { mechanism: "EXTERNAL", ... } }
 * ```
 * @throws {TypeError} for TLS settings with an `amqp://` URL, a cert
 *   without a key (or the reverse), text that is not PEM, a key that
 *   cannot be decrypted or is not the cert's (see {@linkcode checkKeyPair}),
 *   or a login mechanism that is unknown or not the same on every URL.
 */
export function tlsSocketOptions(
  urls: readonly URL[],
  tls: TlsOptions | undefined,
): Partial<SocketOptions> {
  const options: Partial<SocketOptions> = {};
  const external = externalLogin(urls);
  if (external) options.credentials = amqp.credentials.external();
  if (!tls) return options;
  const plain = urls.find((url) => url.protocol !== "amqps:");
  if (plain) {
    throw new TypeError(`tls needs amqps:// URLs, got one with ${plain.protocol}//`);
  }
  if (!tls.cert !== !tls.key) {
    throw new TypeError("tls.cert and tls.key go together: give both or neither");
  }
  for (const name of ["ca", "cert", "key"] as const) {
    const pem = tls[name];
    if (pem !== undefined && !pem.includes("-----BEGIN ")) {
      throw new TypeError(`tls.${name} must be PEM text (-----BEGIN ...), not a file name`);
    }
  }
  checkKeyPair(tls);
  for (const name of ["ca", "cert", "key", "passphrase", "servername"] as const) {
    if (tls[name] !== undefined) options[name] = tls[name];
  }
  return options;
}

/** What the settings are called in messages: the library's names, or the command line's. */
export interface TlsNames {
  cert: string;
  key: string;
  passphrase: string;
}

/**
 * Checks that `tls.key` can be read (with `tls.passphrase` if encrypted)
 * and is the key of `tls.cert`. Without this check, a wrong passphrase
 * sends no certificate at all (the broker then says it requires one) and
 * a key of another certificate fails as "unsupported protocol".
 *
 * @example
 * ```ts
 * checkKeyPair({ cert: undefined, key: undefined }); // nothing to check
 * ```
 * @throws {TypeError} naming what is wrong and what to pass.
 */
export function checkKeyPair(
  tls: TlsOptions,
  names: TlsNames = { cert: "tls.cert", key: "tls.key", passphrase: "tls.passphrase" },
): void {
  if (!tls.cert || !tls.key) return;
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: tls.key, passphrase: tls.passphrase });
  } catch (error) {
    const encrypted = /ENCRYPTED/.test(tls.key);
    const message = tls.passphrase !== undefined && encrypted
      ? `${names.key} cannot be decrypted with ${names.passphrase} (a wrong passphrase?)`
      : encrypted
      ? `${names.key} is encrypted: give its passphrase (${names.passphrase})`
      : `${names.key} holds no private key that can be read`;
    throw new TypeError(message, { cause: error });
  }
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(tls.cert);
  } catch (error) {
    throw new TypeError(`${names.cert} holds no certificate that can be read`, { cause: error });
  }
  const spki = (publicKey: KeyObject) => publicKey.export({ type: "spki", format: "der" });
  if (!Buffer.from(spki(createPublicKey(key))).equals(Buffer.from(spki(certificate.publicKey)))) {
    throw new TypeError(
      `${names.cert} and ${names.key} do not belong together: the key is not the certificate's`,
    );
  }
}

/**
 * The login mechanism one URL asks for: `?auth_mechanism=`, lower case,
 * `"plain"` when absent (the value is checked by the connection).
 *
 * @example
 * ```ts
 * loginMechanism(new URL("amqps://broker?auth_mechanism=EXTERNAL")); // "external"
 * ```
 */
export function loginMechanism(url: URL): string {
  return (url.searchParams.get(AUTH_MECHANISM_PARAMETER) ?? "plain").toLowerCase();
}

/** Whether the URLs ask to log in with the client certificate; throws if they disagree. */
function externalLogin(urls: readonly URL[]): boolean {
  const mechanisms = new Set(urls.map((url) => {
    const mechanism = loginMechanism(url);
    if (mechanism !== "plain" && mechanism !== "external") {
      throw new TypeError(
        `${AUTH_MECHANISM_PARAMETER} must be "plain" or "external", got "${mechanism}"`,
      );
    }
    return mechanism;
  }));
  if (mechanisms.size > 1) {
    throw new TypeError(`${AUTH_MECHANISM_PARAMETER} must be the same on every broker URL`);
  }
  if (mechanisms.has("external") && urls.some((url) => url.protocol !== "amqps:")) {
    throw new TypeError(`${AUTH_MECHANISM_PARAMETER}=external needs amqps:// URLs`);
  }
  return mechanisms.has("external");
}

/** Certificate errors that mean: no CA we trust signed the broker's certificate. */
const UNTRUSTED_CERTIFICATE = new Set([
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_UNTRUSTED",
]);

/**
 * One line saying what went wrong with TLS, and what to pass, or undefined
 * if `error` is not about TLS. `where` names the broker (no password).
 *
 * @example
 * ```ts
 * const error = Object.assign(new Error("received fatal alert: CertificateRequired"), {
 *   code: "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED",
 * });
 * describeTlsFailure(error, "amqps://broker:5671");
 * // "TLS with amqps://broker:5671 failed: the broker requires a client certificate (pass ...)"
 * ```
 */
export function describeTlsFailure(error: unknown, where: string): string | undefined {
  const message = error instanceof Error ? error.message : String(error);
  const code = String((error as { code?: unknown })?.code ?? "");
  const failed = `TLS with ${where} failed`;
  if (/CERTIFICATE_REQUIRED/.test(code) || /CertificateRequired/i.test(message)) {
    return `${failed}: the broker requires a client certificate ` +
      `(pass --cert FILE --key FILE, or tls.cert and tls.key)`;
  }
  if (UNTRUSTED_CERTIFICATE.has(code)) {
    return `${failed}: the broker's certificate is not signed by a CA we trust (${message}); ` +
      `pass the CA that signed it (--cacert FILE, or tls.ca)`;
  }
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID") {
    const names = message.includes("altnames: ") ? message.split("altnames: ").at(-1) : undefined;
    return `${failed}: the broker's certificate is for another name` +
      `${names ? ` (it names ${names})` : ""}; ` +
      `connect to a name it holds (or set tls.servername)`;
  }
  if (code === "CERT_HAS_EXPIRED" || code === "CERT_NOT_YET_VALID") {
    return `${failed}: the broker's certificate ${
      code === "CERT_HAS_EXPIRED" ? "has expired" : "is not valid yet"
    } (is this machine's clock right?)`;
  }
  if (/ALERT_(BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_UNKNOWN|DECRYPT_ERROR)/.test(code)) {
    return `${failed}: the broker refused our client certificate (${message}); ` +
      `pass one signed by a CA the broker trusts (--cert FILE --key FILE, or tls.cert and tls.key)`;
  }
  if (code === "ERR_SSL_WRONG_VERSION_NUMBER" || /InvalidContentType/.test(message)) {
    return `${failed}: the port does not speak TLS (amqps:// is usually port 5671, amqp:// 5672)`;
  }
  if (/^ERR_SSL|^ERR_TLS/.test(code)) {
    return `${failed}: ${message.split("\n")[0]} (do --cert and --key, or tls.cert and tls.key, ` +
      `belong together?)`;
  }
  return undefined;
}
