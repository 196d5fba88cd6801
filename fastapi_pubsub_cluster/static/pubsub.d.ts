// Type declarations for pubsub.js, the browser client of fastapi-pubsub-cluster
// (docs/client-protocol.md). Served beside it: import { PubSubClient } from "/pubsub.js";

/** The wire format of every frame, both ways. */
export type WireFormat = "json" | "msgpack";

/** Where a client is in its life. */
export type ClientState = "connecting" | "open" | "reconnecting" | "closed";

export interface ClientOptions {
  /** Wire format of all frames (default: the URL's `format`, else "json"). */
  format?: WireFormat;
  /** First reconnect delay cap in ms (default 250). */
  minDelay?: number;
  /** Largest reconnect delay in ms (default 10000). */
  maxDelay?: number;
  /** Ms a connection may take to be welcomed (default 10000). */
  connectTimeout?: number;
  /** The WebSocket class (default: the global one). */
  WebSocket?: typeof WebSocket;
}

/** A message published to `channel`; `id` is its stream id on a history channel. */
export interface ChannelMessage<T = unknown> {
  channel: string;
  data: T;
  id: string | undefined;
}

/** Who is in `channel`; `members` only while the channel is small. */
export interface Presence {
  channel: string;
  count: number;
  members: Record<string, unknown> | undefined;
}

/** A connection ended; the client tries again in `reconnectIn` ms, or never (null). */
export interface CloseInfo {
  code: number;
  reason: string;
  reconnectIn: number | null;
}

/** A connection was welcomed; `resumed` for every connection after the first. */
export interface OpenInfo {
  connectionId: string;
  channel: string;
  resumed: boolean;
}

/** A join or leave the server refused; with `retry` the client asks again by itself. */
export interface Refusal {
  channel: string;
  reason: string;
  retry: boolean;
}

/** A resume reached back further than history (`oldest`: the oldest id kept), or the
 * server refused the resume position (`reason`): resync from elsewhere. */
export interface Gap {
  channel: string;
  since: string | null;
  oldest: string | null;
  reason?: string;
}

/** What each event's listener receives. */
export interface ClientEvents {
  message: ChannelMessage;
  presence: Presence;
  /** A send to this client alone (`hub.send_to`), or what the app sent with `send_json`. */
  direct: unknown;
  open: OpenInfo;
  close: CloseInfo;
  joined: { channel: string };
  left: { channel: string };
  refused: Refusal;
  gap: Gap;
}

/** A socket in its own channel (the URL's) and in any further channels it joins;
 * reconnects with backoff and resumes history channels after the last message it saw. */
export class PubSubClient {
  /** @param url `ws(s)://host/<route>/<channel>`, or a path on this page's host */
  constructor(url: string | URL, options?: ClientOptions);

  readonly format: WireFormat;
  minDelay: number;
  maxDelay: number;
  connectTimeout: number;
  /** The own channel: the URL's last segment until the server's welcome names it. */
  channel: string;
  /** The server's id for the current connection (from `welcome`). */
  connectionId: string | null;
  state: ClientState;

  /** Calls `listener` on each `event`; returns a function that removes it. */
  on<K extends keyof ClientEvents>(event: K, listener: (payload: ClientEvents[K]) => void): () => void;
  /** Any other `event` the server sends: the frame as it came. */
  on(event: string, listener: (payload: any) => void): () => void;
  /** Removes a listener added with `on`. */
  off<K extends keyof ClientEvents>(event: K, listener: (payload: ClientEvents[K]) => void): void;
  off(event: string, listener: (payload: any) => void): void;

  /** The channels this client is in, or will be in once (re)connected: its own first. */
  readonly channels: string[];
  /** The newest stream id seen on `channel` (a history channel), if any. */
  lastId(channel: string): string | undefined;
  /** Sends a message to the server (its `on_message`); false (nothing sent) while not
   * connected. */
  send(data: unknown): boolean;
  /** Joins a further channel (the socket class must set `client_joins = True`): resolves on
   * `joined`, rejects on `refused`. Joined again after every reconnect. */
  join(channel: string): Promise<void>;
  /** Leaves a further channel: resolves on `left`, rejects on `refused` (the own channel). */
  leave(channel: string): Promise<void>;
  /** Closes the socket for good: no reconnect; pending joins and leaves are rejected. */
  close(): void;
}

/** Compares two stream ids `<ms>-<seq>` numerically: negative, zero or positive. */
export function compareStreamIds(a: string, b: string): number;

/** Decodes one msgpack value: maps become objects, bin a Uint8Array, 64-bit integers beyond
 * 2^53 a bigint, ext types `{type, data}`. */
export function decode(input: ArrayBuffer | Uint8Array): unknown;

/** Encodes a value as msgpack, as JSON.stringify would see it; Uint8Array and ArrayBuffer
 * become bin. */
export function encode(input: unknown): Uint8Array;
