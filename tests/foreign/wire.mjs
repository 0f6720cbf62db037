// The wire contract of docs/wire-format.md, written from that page alone, in JavaScript.
// encode() builds what a client publishes; decode() reads any delivery as an agent would.
// Checked against docs/wire-vectors/ by client.mjs before it talks to a real agent.

export const CONTENT_TYPE = "application/json";
export const TYPES = ["request", "response", "notification", "task", "result", "error", "status"];
const AGENT_ID = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/;
const TEXT_HEADERS = ["x-sender", "x-recipient", "x-conversation-id", "x-metadata"];
const MAX_US = 253402300799999999n; // 9999-12-31T23:59:59.999999Z
const MIN_US = -62135596800000000n; // 0001-01-01T00:00:00Z

export class Refused extends Error {}

/** Microseconds since the epoch of an ISO 8601 instant with up to 6 fraction digits. */
export function isoToUs(iso) {
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?(Z|[+-]\d\d:\d\d)$/.exec(iso);
  if (!m) throw new Error(`not an ISO instant: ${iso}`);
  const ms = Date.parse(`${m[1]}${m[3]}`);
  return BigInt(ms) * 1000n + BigInt((m[2] ?? "").padEnd(6, "0"));
}

/** The message as a client would build it: the vectors' `message` objects. */
export function encode(message, { replyTo, deadline, now } = {}) {
  const tsUs = isoToUs(message.timestamp);
  const headers = {
    "x-sender": message.sender,
    "x-recipient": message.recipient,
    "x-timestamp-us": Number(tsUs),
  };
  if (message.conversation_id != null) headers["x-conversation-id"] = message.conversation_id;
  if (message.metadata && Object.keys(message.metadata).length > 0) {
    headers["x-metadata"] = JSON.stringify(message.metadata);
  }
  const properties = {
    content_type: CONTENT_TYPE,
    delivery_mode: 2,
    priority: message.priority,
    message_id: message.id,
    timestamp: Number(tsUs / 1000000n),
    type: message.type,
  };
  if (message.reply_to != null) properties.correlation_id = message.reply_to;
  if (replyTo != null) properties.reply_to = replyTo;
  if (deadline != null) {
    const deadlineUs = isoToUs(deadline);
    headers["x-deadline-us"] = Number(deadlineUs);
    const waitMs = (deadlineUs - isoToUs(now)) / 1000n;
    properties.expiration = String(waitMs > 0n ? waitMs : 1n);
  }
  return {
    routing_key: [
      message.type,
      message.priority,
      message.sender || "-",
      message.recipient || "-",
    ].join("."),
    properties,
    headers,
    body: Buffer.from(JSON.stringify(message.content), "utf8"),
  };
}

function text(headers, name) {
  const value = headers[name];
  if (value === undefined || value === null) return null;
  if (typeof value === "string") return value;
  if (Buffer.isBuffer(value)) {
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(value);
    } catch {
      throw new Refused(`${name} is not UTF-8`);
    }
  }
  throw new Refused(`${name} must be a string`);
}

/**
 * Read a delivery ({routing_key, properties, headers, body: Buffer}) as the doc says an
 * agent does. Returns the message with `id`/`timestamp` set to null where the agent would
 * generate them, or throws Refused.
 */
export function decode(delivery, { inboxOwner = "", maxBodyBytes = 4 * 1024 * 1024 } = {}) {
  const p = delivery.properties ?? {};
  if (delivery.body.length > maxBodyBytes) throw new Refused("body over the limit");
  const contentType = (p.content_type ?? CONTENT_TYPE).split(";")[0].trim().toLowerCase();
  if (contentType !== CONTENT_TYPE) throw new Refused(`content type ${p.content_type}`);
  let bodyText;
  try {
    bodyText = new TextDecoder("utf-8", { fatal: true }).decode(delivery.body);
  } catch {
    throw new Refused("body is not UTF-8");
  }
  let content;
  try {
    content = JSON.parse(bodyText);
  } catch {
    throw new Refused("body is not JSON");
  }
  const headers = delivery.headers ?? {};
  for (const name of TEXT_HEADERS) text(headers, name);
  const words = (delivery.routing_key ?? "").split(".");
  const key = words.length === 4 ? words : [null, null, null, null];
  const type = p.type || key[0] || "notification";
  if (!TYPES.includes(type)) throw new Refused(`unknown type ${type}`);
  let sender = text(headers, "x-sender");
  if (sender === null) sender = key[2] && key[2] !== "-" ? key[2] : "";
  let recipient = text(headers, "x-recipient");
  if (recipient === null) recipient = key[3] === null ? inboxOwner : key[3] === "-" ? "" : key[3];
  for (const id of [sender, recipient]) {
    if (id !== "" && !AGENT_ID.test(id)) throw new Refused(`invalid agent id ${id}`);
  }
  let metadata = {};
  const rawMeta = text(headers, "x-metadata");
  if (rawMeta !== null) {
    try {
      metadata = JSON.parse(rawMeta);
    } catch {
      throw new Refused("x-metadata is not JSON");
    }
    if (metadata === null || typeof metadata !== "object" || Array.isArray(metadata)) {
      throw new Refused("x-metadata must be a JSON object");
    }
  }
  let timestampUs = null;
  const tsHeader = headers["x-timestamp-us"];
  if (typeof tsHeader === "number" || typeof tsHeader === "bigint") {
    timestampUs = BigInt(tsHeader);
    timestampUs = timestampUs > MAX_US ? MAX_US : timestampUs < MIN_US ? MIN_US : timestampUs;
  } else if (p.timestamp != null) {
    timestampUs = BigInt(p.timestamp) * 1000000n;
  }
  const priority = p.priority ? Math.min(Math.max(p.priority, 1), 4) : 2;
  return {
    id: p.message_id || null,
    sender,
    recipient,
    type,
    priority,
    content,
    metadata,
    timestamp_us: timestampUs,
    reply_to: p.correlation_id ?? null,
    conversation_id: text(headers, "x-conversation-id"),
  };
}
