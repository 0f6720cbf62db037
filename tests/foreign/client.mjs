// A foreign client of amqp_agents, written from docs/wire-format.md and docs/wire-vectors/.
//
// Environment: AMQP_URL, AMQP_AGENTS_NAMESPACE (agents `researcher` and `writer` running
// there, as in the demo). Checks the vectors against its own encode/decode (wire.mjs),
// then, against the running agents: a result with every documented field, context,
// each priority including none, an answer through its own inbox, malformed messages
// and their dead letters, a task past its deadline (the only "cancel" the contract
// has), and the conversation read back from history.
// Prints one JSON object {ok, checks: [{name, ok, detail}], timings_ms}; exit code 0 iff ok.

import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { isDeepStrictEqual } from "node:util";
import amqp from "amqplib";
import * as wire from "./wire.mjs";

const AMQP_URL = process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/";
const NS = process.env.AMQP_AGENTS_NAMESPACE ?? "agents";
const ME = "node-client";
// The RabbitMQ user we connect as: every message carries it as user_id (the broker
// refuses any other), so that agents believe our sender (docs/wire-format.md).
const USER = decodeURIComponent(new URL(AMQP_URL).username) || "guest";
const VECTORS = new URL("../../docs/wire-vectors/", import.meta.url);
const WAIT_MS = 15000;

const checks = [];
const timings = {};
function check(name, ok, detail = undefined) {
  checks.push({ name, ok: Boolean(ok), ...(ok ? {} : { detail }) });
}
function same(name, got, want) {
  check(name, isDeepStrictEqual(got, want), { got, want });
}
const vectors = (file) => JSON.parse(readFileSync(new URL(`${file}.json`, VECTORS), "utf8"));
const bodyOf = (amqpSide) =>
  "body_base64" in amqpSide
    ? Buffer.from(amqpSide.body_base64, "base64")
    : Buffer.from(amqpSide.body, "utf8");
const nowUs = () => BigInt(Date.now()) * 1000n; // whole milliseconds: a window's end adds 1 ms

// -- the vectors against this client's own reading of the doc ------------------------------

function checkVectors() {
  for (const v of vectors("messages")) {
    const out = wire.encode(v.message, {
      replyTo: v.encode_with?.reply_to,
      deadline: v.encode_with?.deadline,
      now: v.encode_with?.now,
    });
    same(`vector encode ${v.name}`, { ...out, body: out.body.toString("utf8") }, v.amqp);
  }
  for (const v of [...vectors("messages"), ...vectors("defaults")]) {
    const got = wire.decode(
      { ...v.amqp, body: bodyOf(v.amqp) },
      { inboxOwner: v.inbox_owner ?? "" },
    );
    const want = { ...v.message, id: v.message.id ?? null };
    delete want.timestamp;
    const generated = v.generated ?? [];
    check(
      `vector decode ${v.name}: generated fields`,
      (got.id === null) === generated.includes("id") &&
        (got.timestamp_us === null) === generated.includes("timestamp"),
      { got, generated },
    );
    if (!generated.includes("timestamp")) {
      same(`vector decode ${v.name}: timestamp`, got.timestamp_us, wire.isoToUs(v.message.timestamp));
    }
    const { timestamp_us: _ignored, ...rest } = got;
    same(`vector decode ${v.name}`, rest, want);
  }
  for (const v of vectors("refused")) {
    let refused = false;
    try {
      wire.decode({ ...v.amqp, body: bodyOf(v.amqp) }, { maxBodyBytes: v.max_body_bytes });
    } catch (error) {
      refused = error instanceof wire.Refused;
    }
    check(`vector refused ${v.name}`, refused, v.refused);
  }
}

// -- talking to the agents -----------------------------------------------------------------

/** amqplib's properties -> the vectors' names, leaving out what is absent. */
function snakeProperties(p) {
  const names = {
    contentType: "content_type",
    deliveryMode: "delivery_mode",
    priority: "priority",
    correlationId: "correlation_id",
    replyTo: "reply_to",
    expiration: "expiration",
    messageId: "message_id",
    timestamp: "timestamp",
    type: "type",
    userId: "user_id",
    appId: "app_id",
  };
  const out = {};
  for (const [camel, snake] of Object.entries(names)) {
    if (p[camel] !== undefined) out[snake] = p[camel];
  }
  return out;
}

/** The vectors' properties -> amqplib's publish options. */
function publishOptions(props, headers) {
  return {
    contentType: props.content_type,
    deliveryMode: props.delivery_mode ?? 2,
    priority: props.priority,
    correlationId: props.correlation_id,
    replyTo: props.reply_to,
    expiration: props.expiration,
    messageId: props.message_id,
    timestamp: props.timestamp,
    type: props.type,
    userId: USER, // ours: a vector's user_id is a user the broker would refuse from us
    headers: headers ?? {},
    mandatory: true,
  };
}

/** Collects deliveries of a queue; `next(pred)` resolves with the first that matches. */
class Inbox {
  constructor(channel, queue) {
    this.channel = channel;
    this.queue = queue;
    this.seen = [];
    this.waiters = [];
  }
  async start(args = undefined) {
    const { consumerTag } = await this.channel.consume(
      this.queue,
      (msg) => {
        this.channel.ack(msg);
        this.seen.push(msg);
        for (const w of [...this.waiters]) {
          if (w.pred(msg)) {
            this.waiters.splice(this.waiters.indexOf(w), 1);
            w.resolve(msg);
          }
        }
      },
      { noAck: false, arguments: args },
    );
    this.tag = consumerTag;
    return this;
  }
  next(pred, what) {
    const found = this.seen.find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve };
      this.waiters.push(w);
      setTimeout(() => {
        if (this.waiters.includes(w)) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          reject(new Error(`nothing in ${this.queue} within ${WAIT_MS} ms: ${what}`));
        }
      }, WAIT_MS).unref();
    });
  }
  async stop() {
    await this.channel.cancel(this.tag);
  }
}

function publish(channel, exchange, key, body, options) {
  return new Promise((resolve, reject) => {
    channel.publish(exchange, key, body, options, (err) => (err ? reject(err) : resolve()));
  });
}

async function sendTask(channel, to, { description, context, priority, replyTo, deadlineUs, conversationId }) {
  const id = randomUUID();
  const ts = nowUs();
  const headers = {
    "x-sender": ME,
    "x-recipient": to,
    "x-timestamp-us": Number(ts),
    "x-conversation-id": conversationId ?? randomUUID(),
  };
  const options = {
    contentType: wire.CONTENT_TYPE,
    deliveryMode: 2,
    messageId: id,
    type: "task",
    timestamp: Number(ts / 1000000n),
    userId: USER,
    headers,
    mandatory: true,
  };
  if (priority !== undefined) options.priority = priority;
  if (replyTo) options.replyTo = replyTo;
  if (deadlineUs !== undefined) {
    headers["x-deadline-us"] = Number(deadlineUs);
    const waitMs = (deadlineUs - ts) / 1000n;
    if (waitMs > 0n) options.expiration = String(waitMs);
  }
  const body = Buffer.from(JSON.stringify({ description, context: context ?? {} }));
  await publish(channel, NS, `task.${priority ?? 2}.${ME}.${to}`, body, options);
  return { id, ts, headers, options, body };
}

/** Every documented field of an answer to `task` (sent to `to` with `replyTo`). */
function checkAnswer(name, msg, task, { type, to, replyQueue, priority, before, after }) {
  const p = msg.properties;
  const h = p.headers ?? {};
  same(`${name}: exchange`, msg.fields.exchange, replyQueue ? `${NS}.replies` : NS);
  same(
    `${name}: routing key`,
    msg.fields.routingKey,
    replyQueue ?? `${type}.${priority}.${to}.${ME}`,
  );
  same(`${name}: type`, p.type, type);
  same(`${name}: correlation_id`, p.correlationId, task.id);
  same(`${name}: priority copied from the task`, p.priority, priority);
  same(`${name}: content_type`, p.contentType, wire.CONTENT_TYPE);
  same(`${name}: delivery_mode`, p.deliveryMode, 2);
  check(`${name}: message_id is a UUID`, /^[0-9a-f-]{36}$/.test(p.messageId ?? ""), p.messageId);
  same(`${name}: no reply_to, no expiration`, [p.replyTo, p.expiration], [undefined, undefined]);
  same(`${name}: x-sender`, h["x-sender"], to);
  same(`${name}: x-recipient is the task's sender`, h["x-recipient"], ME);
  same(`${name}: x-conversation-id copied`, h["x-conversation-id"], task.headers["x-conversation-id"]);
  const us = BigInt(h["x-timestamp-us"] ?? 0);
  check(`${name}: x-timestamp-us when sent`, us >= before && us <= after, { us: String(us) });
  same(`${name}: timestamp is x-timestamp-us in seconds`, BigInt(p.timestamp ?? -1), us / 1000000n);
  same(`${name}: no x-metadata, x-deadline-us, x-attempt`, [h["x-metadata"], h["x-deadline-us"], h["x-attempt"]], [undefined, undefined, undefined]);
}

async function main() {
  checkVectors();
  const connection = await amqp.connect(AMQP_URL);
  const channel = await connection.createConfirmChannel();
  const returned = [];
  channel.on("return", (msg) => returned.push(msg.properties.messageId));
  try {
    // What a foreign requester declares itself: its reply queue, bound by its own name.
    const replyQueue = `${NS}.reply.${ME}.${randomUUID().replaceAll("-", "")}`;
    await channel.assertQueue(replyQueue, { exclusive: true, durable: false, autoDelete: false });
    await channel.bindQueue(replyQueue, `${NS}.replies`, replyQueue);
    const replies = await new Inbox(channel, replyQueue).start();
    const answerTo = (task, type) => replies.next(
      (m) => m.properties.correlationId === task.id && m.properties.type === type,
      `${type} to ${task.id}`,
    );

    // 1. A result, and every documented field of it (and of the status before it).
    const conversationId = randomUUID();
    const before = nowUs();
    const started = performance.now();
    const task = await sendTask(channel, "researcher", {
      description: "message queues", priority: 2, replyTo: replyQueue,
      deadlineUs: before + 30_000_000n, conversationId,
    });
    const result = await answerTo(task, "result");
    timings.round_trip = Math.round((performance.now() - started) * 10) / 10;
    const after = nowUs() + 1000n;
    const status = await answerTo(task, "status");
    const expect = { to: "researcher", replyQueue, priority: 2, before, after };
    checkAnswer("result", result, task, { ...expect, type: "result" });
    same("result: body is the handler's return value", JSON.parse(result.content), "Research completed on: message queues");
    checkAnswer("status", status, task, { ...expect, type: "status" });
    same("status: body", JSON.parse(status.content), { step: "searching sources" });
    check("status arrives before the result", replies.seen.indexOf(status) < replies.seen.indexOf(result));

    // 2. The handler's context travels in the task body.
    const withContext = await sendTask(channel, "writer", {
      description: "an article", context: { research: "notes from node" }, replyTo: replyQueue, priority: 2,
    });
    same("context reaches the handler", JSON.parse((await answerTo(withContext, "result")).content), "Article written based on: notes from node");

    // 3. Each priority, and none: the answer carries the task's priority; none is normal (2).
    for (const priority of [1, 2, 3, 4, undefined]) {
      const t = await sendTask(channel, "researcher", { description: `p${priority}`, priority, replyTo: replyQueue });
      const answer = await answerTo(t, "result");
      same(`priority ${priority ?? "none"} is answered at`, answer.properties.priority, priority ?? 2);
    }

    // 4. Without reply_to the answer goes to the sender's inbox, which a foreign agent
    //    declares with the documented arguments and binds (inbox and history) itself.
    const inbox = `${NS}.inbox.${ME}`;
    await channel.assertQueue(inbox, {
      durable: true,
      arguments: {
        "x-queue-type": "classic",
        "x-max-priority": 4,
        "x-dead-letter-exchange": `${NS}.dlx`,
        "x-overflow": "reject-publish",
      },
    });
    await channel.bindQueue(inbox, NS, `*.*.*.${ME}`);
    await channel.bindQueue(`${NS}.history`, NS, `*.*.*.${ME}`);
    const inboxReader = await new Inbox(channel, inbox).start();
    const noReplyTo = await sendTask(channel, "researcher", { description: "to my inbox", priority: 3 });
    const inInbox = await inboxReader.next((m) => m.properties.correlationId === noReplyTo.id && m.properties.type === "result", "result in inbox");
    checkAnswer("result to the inbox", inInbox, noReplyTo, { to: "researcher", replyQueue: undefined, priority: 3, before: noReplyTo.ts, after: nowUs() + 1000n, type: "result" });
    await inboxReader.stop();

    // 5. Malformed messages and refusals: each one's dead letter, as the vectors say.
    const dead = await new Inbox(channel, `${NS}.dead`).start();
    const cases = [];
    for (const v of vectors("refused")) {
      if (v.max_body_bytes !== undefined) continue; // the agents' limit is the 4 MiB default
      cases.push({ name: `refused ${v.name}`, amqp: v.amqp, reason: `undecodable: ${v.refused}` });
    }
    for (const v of vectors("dead-letters")) {
      if (v.dead_letter_by.error || v.amqp.properties.user_id === "mallory") continue; // needs a failing handler / another user
      cases.push({ name: `dead letter ${v.name}`, amqp: v.amqp, expected: v.dead });
    }
    for (const c of cases) {
      await publish(channel, NS, c.amqp.routing_key, bodyOf(c.amqp), publishOptions(c.amqp.properties, c.amqp.headers));
    }
    for (const c of cases) {
      const id = c.amqp.properties.message_id;
      let msg;
      try {
        msg = await dead.next((m) => m.properties.messageId === id, c.name);
      } catch (error) {
        check(c.name, false, String(error));
        continue;
      }
      const headers = msg.properties.headers ?? {};
      if (c.expected) {
        same(`${c.name}: headers`, headers, c.expected.headers);
        // The copy carries the agent's own user: here the agents connect as USER.
        same(`${c.name}: properties`, snakeProperties(msg.properties), { ...c.expected.properties, user_id: USER });
        same(`${c.name}: routing key`, msg.fields.routingKey, c.expected.routing_key);
        same(`${c.name}: body`, msg.content.toString("base64"), bodyOf(c.expected).toString("base64"));
      } else {
        check(`${c.name}: reason`, String(headers["x-dead-reason"]).startsWith(c.reason), headers);
        same(`${c.name}: agent and attempts`, [headers["x-dead-agent"], headers["x-dead-attempts"]], ["researcher", 0]);
        same(`${c.name}: body kept`, msg.content.toString("base64"), bodyOf(c.amqp).toString("base64"));
      }
    }

    // A CC copy into another agent's inbox is refused there as misaddressed.
    const ccId = randomUUID();
    await publish(channel, NS, `notification.2.${ME}.researcher`, Buffer.from("{}"), {
      ...publishOptions({ content_type: wire.CONTENT_TYPE, message_id: ccId, type: "notification" }, {
        "x-sender": ME, CC: [`notification.2.${ME}.writer`],
      }),
    });
    // The original, in researcher's inbox, carries the CC header too: refused there as well.
    const cc = await dead.next((m) => m.properties.messageId === ccId && m.properties.headers["x-dead-agent"] === "writer", "misaddressed CC copy");
    const ccHeaders = cc.properties.headers;
    same("CC copy: refused by writer", ccHeaders["x-dead-agent"], "writer");
    check("CC copy: reason misaddressed", String(ccHeaders["x-dead-reason"]).startsWith("misaddressed: "), ccHeaders);
    same("CC copy: no CC on the dead letter", ccHeaders.CC, undefined);

    // 6. "Cancelling": the contract has no cancel message; a task past its deadline is not run.
    const late = await sendTask(channel, "researcher", {
      description: "too late", priority: 2, replyTo: replyQueue, deadlineUs: nowUs() - 1_000_000n,
    });
    const expired = await dead.next((m) => m.properties.messageId === late.id, "expired task");
    same("task past its deadline: dead-lettered as expired", expired.properties.headers["x-dead-reason"], "expired");
    await dead.stop();

    // 7. History: the conversation of check 1, read back from the stream.
    const historyStarted = performance.now();
    const history = await readHistory(connection);
    timings.history_read = Math.round((performance.now() - historyStarted) * 10) / 10;
    const conversation = history.filter((m) => m.properties.headers?.["x-conversation-id"] === conversationId);
    same(
      "history: the conversation in order",
      conversation.map((m) => [m.properties.type, m.properties.messageId]),
      [["task", task.id], ["status", status.properties.messageId], ["result", result.properties.messageId]],
    );
    for (const m of conversation) {
      const decoded = wire.decode({ routing_key: m.fields.routingKey, properties: snakeProperties(m.properties), headers: m.properties.headers, body: m.content });
      same(`history: ${m.properties.type} decodes with its sender and recipient`, [decoded.sender, decoded.recipient], m.properties.type === "task" ? [ME, "researcher"] : ["researcher", ME]);
    }
    same("history: no expired task's answer anywhere", history.filter((m) => m.properties.correlationId === late.id).length, 0);
    same("no answer to the expired task", replies.seen.filter((m) => m.properties.correlationId === late.id).length, 0);
    same("nothing returned unroutable", returned, []);
    await replies.stop();
    await channel.deleteQueue(replyQueue);
  } finally {
    await connection.close();
  }
}

/** Read {ns}.history from its start to a marker appended now (docs: "Reading history"). */
async function readHistory(connection) {
  const channel = await connection.createConfirmChannel();
  const marker = randomUUID();
  await channel.prefetch(500); // a stream needs a prefetch, and manual acks
  await publish(channel, "", `${NS}.history`, Buffer.from("null"), {
    contentType: wire.CONTENT_TYPE, deliveryMode: 2, headers: { "x-history-marker": marker },
  });
  const found = [];
  const reader = new Inbox(channel, `${NS}.history`);
  await reader.start({ "x-stream-offset": "first" });
  await reader.next((m) => m.properties.headers?.["x-history-marker"] === marker, "history marker");
  await reader.stop();
  await channel.close();
  for (const m of reader.seen) {
    if (m.properties.headers?.["x-history-marker"] === undefined) found.push(m);
  }
  return found;
}

const started = performance.now();
let failure;
try {
  await main();
} catch (error) {
  failure = String(error?.stack ?? error);
}
timings.total = Math.round(performance.now() - started);
const ok = failure === undefined && checks.every((c) => c.ok);
process.stdout.write(`${JSON.stringify({ ok, failure: failure ?? null, checks: checks.length, failed: checks.filter((c) => !c.ok), timings_ms: timings })}\n`);
process.exit(ok ? 0 : 1);
