// A page's use of pubsub.js, type-checked against pubsub.d.ts (tests/test_typescript.py):
// tsc --noEmit --strict -p tests/node/tsconfig.json
import {
  type ChannelMessage,
  type ClientOptions,
  compareStreamIds,
  decode,
  encode,
  PubSubClient,
} from "../../fastapi_pubsub_cluster/static/pubsub.js";

interface Score {
  home: number;
  away: number;
}

const options: ClientOptions = { format: "msgpack", minDelay: 100, maxDelay: 5000 };
const client = new PubSubClient("/ws/scores", options);

const stop: () => void = client.on("message", (message) => {
  const channel: string = message.channel;
  const id: string | undefined = message.id;
  const score = message.data as Score;
  console.log(channel, id, score.home - score.away);
});
client.on("presence", ({ channel, count, members }) => {
  const names: string[] = Object.keys(members ?? {});
  console.log(channel, count, names);
});
client.on("open", ({ connectionId, resumed }) => console.log(connectionId, resumed));
client.on("close", ({ code, reconnectIn }) => console.log(code, reconnectIn ?? "never"));
client.on("gap", ({ channel, since, oldest }) => console.log(channel, since, oldest));
client.on("refused", ({ channel, reason, retry }) => console.log(channel, reason, retry));
client.on("direct", (data: unknown) => console.log(data));
client.on("custom-server-event", (frame) => console.log(frame.anything));

async function follow(channel: string): Promise<string[]> {
  await client.join(channel);
  const sent: boolean = client.send({ hello: channel });
  const last: string | undefined = client.lastId(channel);
  if (sent && last !== undefined && compareStreamIds(last, "0-0") > 0) {
    await client.leave(channel);
  }
  return client.channels;
}

function lastMessage(messages: ChannelMessage<Score>[]): Score | undefined {
  return messages.at(-1)?.data;
}

const bytes: Uint8Array = encode({ n: 1 });
const value: unknown = decode(bytes);
const state: "connecting" | "open" | "reconnecting" | "closed" = client.state;
console.log(value, state, client.connectionId, client.format, lastMessage([]));
void follow("news").finally(() => {
  stop();
  client.close();
});
