// pubsub.js: the browser client of fastapi-pubsub-cluster (docs/client-protocol.md).
// A dependency-free ES module: import { PubSubClient } from "/pubsub.js";

/**
 * @typedef {"json" | "msgpack"} WireFormat
 * @typedef {"connecting" | "open" | "reconnecting" | "closed"} ClientState
 * @typedef {object} ClientOptions
 * @property {WireFormat} [format] wire format of all frames (default: the URL's, else "json")
 * @property {number} [minDelay] first reconnect delay cap in ms (default 250)
 * @property {number} [maxDelay] largest reconnect delay in ms (default 10000)
 * @property {number} [connectTimeout] ms a connection may take to be welcomed (default 10000)
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (default: the global one)
 * @typedef {{channel: string, data: any, id: string | undefined}} ChannelMessage
 * @typedef {{channel: string, count: number, members: Record<string, any> | undefined}} Presence
 * @typedef {{code: number, reason: string, reconnectIn: number | null}} CloseInfo
 */

/**
 * Compares two stream ids `<ms>-<seq>` numerically.
 * @param {string} a
 * @param {string} b
 * @returns {number} negative, zero or positive
 */
export function compareStreamIds(a, b) {
  const [aMs, aSeq = "0"] = String(a).split("-");
  const [bMs, bSeq = "0"] = String(b).split("-");
  return compareDigits(aMs, bMs) || compareDigits(aSeq, bSeq);
}

/**
 * Compares non-negative decimal integers of any length, given as strings.
 * @param {string} a
 * @param {string} b
 */
function compareDigits(a, b) {
  const x = a.replace(/^0+(?=\d)/, "");
  const y = b.replace(/^0+(?=\d)/, "");
  return x.length - y.length || (x < y ? -1 : x > y ? 1 : 0);
}

/** Why a join fails where the server's socket class sets no `client_joins`. */
const NO_CLIENT_JOINS = "this server's socket does not take joins from clients";

/**
 * A socket in its own channel (the URL's) and in any further channels it joins; reconnects
 * with backoff and resumes history channels after the last message it saw on each.
 *
 * Events (see {@link on}): `message` {@link ChannelMessage}, `presence` {@link Presence},
 * `direct` (a send to this client alone: `hub.send_to`, or what the app sent with
 * `send_json`), `open` `{connectionId, channel, resumed}`, `close` {@link CloseInfo},
 * `joined`/`left` `{channel}`, `refused` `{channel, reason, retry}` (with `retry` the client
 * asks again by itself), `gap` `{channel, since, oldest, reason}` (a resume reached back
 * further than history, or the server refused the resume position: resync from elsewhere).
 */
export class PubSubClient {
  /**
   * @param {string | URL} url `ws(s)://host/<route>/<channel>`, or a path on this page's host
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    const base = globalThis.location ? globalThis.location.href : undefined;
    const target = new URL(url, base);
    if (target.protocol === "http:" || target.protocol === "https:") {
      target.protocol = target.protocol === "https:" ? "wss:" : "ws:";
    }
    const format = options.format ?? target.searchParams.get("format");
    /** @type {WireFormat} */
    this.format = format === "msgpack" ? "msgpack" : "json";
    this.minDelay = options.minDelay ?? 250;
    this.maxDelay = options.maxDelay ?? 10000;
    this.connectTimeout = options.connectTimeout ?? 10000;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._url = target;
    /** Own channel: the URL's last segment until the server's welcome names it. */
    this.channel = decodeURIComponent(target.pathname.split("/").pop() || "");
    /** @type {string | null} the server's id for the current connection (from `welcome`) */
    this.connectionId = null;
    /** @type {ClientState} */
    this.state = "connecting";
    /** @type {Map<string, string>} newest stream id seen, per channel */
    this._lastIds = new Map();
    const since = target.searchParams.get("since");
    if (since) this._lastIds.set(this.channel, since);
    /** @type {Set<string>} further channels to be in (re-joined after each reconnect) */
    this._joined = new Set();
    /** @type {Map<string, number>} joins refused for now, and how often in a row */
    this._rejoins = new Map();
    /** @type {Map<string, {kind: string, resolve: Function, reject: Function}[]>} */
    this._pending = new Map();
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    this._attempt = 0;
    this._timer = null;
    this._welcomed = false;
    this._opened = false;
    /** @type {boolean | null} whether the server takes joins (its welcome says); null: not yet */
    this._clientJoins = null;
    /** @type {WebSocket | null} */
    this._socket = null;
    this._connect();
  }

  /**
   * Calls `listener` on each event: message, presence, direct, open, close, joined, left,
   * refused, gap (and any other `event` the server sends). Returns a function that removes it.
   * @param {string} event
   * @param {(payload: any) => void} listener
   * @returns {() => void}
   */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  /** Removes a listener added with {@link on}. */
  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
  }

  /** The channels this client is in, or will be in once (re)connected: its own first. */
  get channels() {
    return [this.channel, ...this._joined];
  }

  /** The newest stream id seen on `channel` (a history channel), if any. */
  lastId(channel) {
    return this._lastIds.get(channel);
  }

  /**
   * Sends a message to the server (its `on_message`), in the client's format. Returns false
   * (and sends nothing) while not connected.
   * @param {any} data
   */
  send(data) {
    const socket = this._socket;
    if (!socket || socket.readyState !== 1 || !this._welcomed) return false;
    socket.send(this.format === "msgpack" ? encode(data) : JSON.stringify(data));
    return true;
  }

  /**
   * Joins a further channel (the socket class must set `client_joins = True`). Resolves on
   * `joined`, rejects on `refused`, and at once where the server's welcome said its socket
   * takes no joins; while disconnected it waits for the next connection.
   * The channel is joined again after every reconnect, resuming its history.
   * @param {string} channel
   * @returns {Promise<void>}
   */
  join(channel) {
    if (typeof channel !== "string") return Promise.reject(new TypeError("a channel is a string"));
    if (this.state === "closed") return Promise.reject(new Error("the client is closed"));
    if (this._clientJoins === false && channel !== this.channel) {
      this._emit("refused", { channel, reason: NO_CLIENT_JOINS, retry: false });
      return Promise.reject(new Error(NO_CLIENT_JOINS));
    }
    const answered = this._await(channel, "join");
    if (channel !== this.channel) this._joined.add(channel);
    this._sendJoin(channel);
    return answered;
  }

  /**
   * Leaves a further channel. Resolves on `left` (or at once while disconnected: it will not
   * be joined again), rejects on `refused` (e.g. the own channel).
   * @param {string} channel
   * @returns {Promise<void>}
   */
  leave(channel) {
    if (typeof channel !== "string") return Promise.reject(new TypeError("a channel is a string"));
    this._joined.delete(channel);
    if (!this.send({ leave: channel })) {
      return channel === this.channel
        ? Promise.reject(new Error("the own channel cannot be left"))
        : Promise.resolve();
    }
    return this._await(channel, "leave");
  }

  /** Closes the socket for good: no reconnect; pending joins and leaves are rejected. */
  close() {
    if (this.state === "closed") return;
    this.state = "closed";
    clearTimeout(this._timer);
    const socket = this._socket;
    this._socket = null;
    if (socket && socket.readyState <= 1) socket.close(1000);
    this._settleAll(new Error("the client is closed"));
    this._emit("close", { code: 1000, reason: "closed by the client", reconnectIn: null });
  }

  // -- the connection -------------------------------------------------------------------

  _connect() {
    const url = new URL(this._url);
    url.searchParams.set("frames", "tagged");
    url.searchParams.set("format", this.format);
    const since = this._lastIds.get(this.channel);
    if (since) url.searchParams.set("since", since);
    else url.searchParams.delete("since");
    const socket = new this._WebSocket(url.href);
    socket.binaryType = "arraybuffer";
    this._socket = socket;
    this._welcomed = false;
    // A connection that is not welcomed in time (a hung server, a lost network) is retried.
    const timeout = setTimeout(() => socket.close(4000, "connect timeout"), this.connectTimeout);
    socket.onmessage = (event) => {
      if (this._socket !== socket) return;
      let frame;
      try {
        frame = typeof event.data === "string" ? JSON.parse(event.data) : decode(event.data);
      } catch (error) {
        console.error("pubsub.js: an undecodable frame", error);
        return;
      }
      if (frame && frame.event === "welcome") clearTimeout(timeout);
      this._dispatch(frame);
    };
    socket.onclose = (event) => {
      clearTimeout(timeout);
      if (this._socket !== socket) return; // replaced, or closed by close()
      if (event.code === 1008 && since && !this._welcomed) {
        // Refused before it was welcomed, with a resume position: asking again with the same
        // position would be refused forever. Report the gap and come back without it.
        this._lastIds.delete(this.channel);
        this._emit("gap", { channel: this.channel, since, oldest: null, reason: event.reason });
      }
      this._socket = null;
      this._welcomed = false;
      this.connectionId = null;
      // Leaves in flight are done: the server forgot this socket and it will not re-join.
      this._settle((entry) => entry.kind === "leave", null);
      this.state = "reconnecting";
      const cap = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt);
      const delay = Math.round(Math.random() * cap); // full jitter
      this._attempt = Math.min(this._attempt + 1, 30);
      this._timer = setTimeout(() => this._connect(), delay);
      this._emit("close", { code: event.code, reason: event.reason, reconnectIn: delay });
    };
  }

  _dispatch(frame) {
    if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
      this._emit("direct", frame);
      return;
    }
    const channel = frame.channel;
    switch (frame.event) {
      case "welcome":
        return this._welcome(frame);
      case "joined":
        this._startAt(channel, frame.last_id);
        this._rejoins.delete(channel);
        this._settle((e) => e.channel === channel && e.kind === "join", null);
        return this._emit("joined", { channel });
      case "left":
        this._lastIds.delete(channel);
        this._settle((e) => e.channel === channel && e.kind === "leave", null);
        return this._emit("left", { channel });
      case "refused":
        if (frame.retry && this._joined.has(channel)) {
          this._retryJoin(channel); // the server's backend was unavailable: ask again later
          return this._emit("refused", { channel, reason: frame.reason, retry: true });
        }
        return this._refuse(channel, frame.reason || "refused");
      case "presence": {
        const { count, members } = frame;
        return this._emit("presence", { channel, count, members });
      }
      case undefined:
        break;
      default:
        return this._emit(frame.event, frame);
    }
    if (typeof channel === "string" && "history_gap" in frame) {
      this._emit("gap", { channel, ...frame.history_gap });
    } else if (typeof channel === "string" && "data" in frame) {
      const id = frame.id;
      if (typeof id === "string") {
        const last = this._lastIds.get(channel);
        if (last !== undefined && compareStreamIds(id, last) <= 0) return; // seen already
        this._lastIds.set(channel, id);
      }
      this._emit("message", { channel, data: frame.data, id });
    } else if (channel === undefined && "data" in frame && Object.keys(frame).length === 1) {
      this._emit("direct", frame.data); // hub.send_to / send_to_user
    } else {
      this._emit("direct", frame); // what the app sent with send_json, as given
    }
  }

  _welcome(frame) {
    const resumed = this._opened;
    this._opened = true;
    this._attempt = 0;
    this._welcomed = true;
    this.connectionId = frame.connection_id;
    if (typeof frame.channel === "string") this.channel = frame.channel;
    this._startAt(this.channel, frame.last_id);
    this.state = "open";
    this._settle((e) => e.channel === this.channel && e.kind === "join", null);
    this._clientJoins = frame.client_joins !== false; // servers before the flag took joins
    if (this._clientJoins) {
      for (const channel of this._joined) this._sendJoin(channel);
    } else {
      for (const channel of [...this._joined]) this._refuse(channel, NO_CLIENT_JOINS);
    }
    this._emit("open", { connectionId: this.connectionId, channel: this.channel, resumed });
  }

  /** A history channel's messages start after `lastId` (the server says where, so that a
   * client that saw no message yet still resumes without a gap). */
  _startAt(channel, lastId) {
    if (typeof lastId === "string" && !this._lastIds.has(channel)) {
      this._lastIds.set(channel, lastId);
    }
  }

  /** A join refused for good: it is not asked again, and whoever waits on it is told. */
  _refuse(channel, reason) {
    this._joined.delete(channel);
    this._settle((e) => e.channel === channel, new Error(reason));
    this._emit("refused", { channel, reason, retry: false });
  }

  /** Ask again for a join refused for now, after a jittered, growing delay. */
  _retryJoin(channel) {
    const attempt = this._rejoins.get(channel) ?? 0;
    this._rejoins.set(channel, attempt + 1);
    const cap = Math.min(this.maxDelay, this.minDelay * 2 ** Math.min(attempt, 30));
    setTimeout(() => {
      if (this._joined.has(channel) && this.state === "open") this._sendJoin(channel);
    }, Math.round(Math.random() * cap));
  }

  _sendJoin(channel) {
    const since = this._lastIds.get(channel);
    this.send(since ? { join: channel, since } : { join: channel });
  }

  // -- answers and listeners -------------------------------------------------------------

  _await(channel, kind) {
    return new Promise((resolve, reject) => {
      if (!this._pending.has(channel)) this._pending.set(channel, []);
      this._pending.get(channel).push({ channel, kind, resolve, reject });
    });
  }

  /** Resolves (error null) or rejects the pending answers that `matches` selects. */
  _settle(matches, error) {
    for (const [channel, entries] of this._pending) {
      const keep = [];
      for (const entry of entries) {
        if (!matches(entry)) keep.push(entry);
        else if (error) entry.reject(error);
        else entry.resolve();
      }
      if (keep.length) this._pending.set(channel, keep);
      else this._pending.delete(channel);
    }
  }

  _settleAll(error) {
    this._settle(() => true, error);
  }

  _emit(event, payload) {
    for (const listener of [...(this._listeners.get(event) ?? [])]) {
      try {
        listener(payload);
      } catch (error) {
        // One failing listener must not break the client or the other listeners.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}

// -- msgpack: what the server sends (nil, bool, ints, floats, str, bin, arrays, maps) --------

const utf8Decoder = new TextDecoder();
const utf8Encoder = new TextEncoder();

/**
 * Decodes one msgpack value. Maps become plain objects, bin a Uint8Array, 64-bit integers
 * beyond 2^53 a BigInt, ext types `{type, data}`.
 * @param {ArrayBuffer | Uint8Array} input
 */
export function decode(input) {
  const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  const take = (n) => {
    if (pos + n > bytes.length) throw new RangeError("msgpack: truncated input");
    pos += n;
    return pos - n;
  };
  const u8 = () => view.getUint8(take(1));
  const u16 = () => view.getUint16(take(2));
  const u32 = () => view.getUint32(take(4));
  const int64 = (signed) => {
    const at = take(8);
    const big = signed ? view.getBigInt64(at) : view.getBigUint64(at);
    return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(big)
      : big;
  };
  const str = (n) => utf8Decoder.decode(bytes.subarray(take(n), pos));
  const bin = (n) => bytes.slice(take(n), pos);
  const array = (n) => Array.from({ length: n }, () => value());
  const map = (n) => {
    const object = {};
    for (let i = 0; i < n; i++) {
      const key = String(value());
      // An own property even for "__proto__", as JSON.parse makes it.
      const item = { value: value(), enumerable: true, writable: true, configurable: true };
      Object.defineProperty(object, key, item);
    }
    return object;
  };
  const ext = (n) => ({ type: view.getInt8(take(1)), data: bin(n) });
  // Lengths of the 8-, 16- and 32-bit forms of str, bin, ext, array and map.
  const size = (form) => (form === 0 ? u8() : form === 1 ? u16() : u32());
  function value() {
    const b = u8();
    if (b <= 0x7f) return b;
    if (b <= 0x8f) return map(b & 0x0f);
    if (b <= 0x9f) return array(b & 0x0f);
    if (b <= 0xbf) return str(b & 0x1f);
    if (b >= 0xe0) return b - 0x100;
    if (b >= 0xc4 && b <= 0xc6) return bin(size(b - 0xc4));
    if (b >= 0xc7 && b <= 0xc9) return ext(size(b - 0xc7));
    if (b >= 0xd4 && b <= 0xd8) return ext(1 << (b - 0xd4)); // fixext 1, 2, 4, 8, 16
    if (b >= 0xd9 && b <= 0xdb) return str(size(b - 0xd9));
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xca: return view.getFloat32(take(4));
      case 0xcb: return view.getFloat64(take(8));
      case 0xcc: return u8();
      case 0xcd: return u16();
      case 0xce: return u32();
      case 0xcf: return int64(false);
      case 0xd0: return view.getInt8(take(1));
      case 0xd1: return view.getInt16(take(2));
      case 0xd2: return view.getInt32(take(4));
      case 0xd3: return int64(true);
      case 0xdc: return array(u16());
      case 0xdd: return array(u32());
      case 0xde: return map(u16());
      case 0xdf: return map(u32());
      default: throw new RangeError(`msgpack: unknown type byte 0x${b.toString(16)}`);
    }
  }
  const result = value();
  if (pos !== bytes.length) throw new RangeError("msgpack: bytes after the value");
  return result;
}

/**
 * Encodes a value as msgpack, as JSON.stringify would see it (toJSON is honoured, undefined
 * object fields are left out); Uint8Array and ArrayBuffer become bin.
 * @param {any} input
 * @returns {Uint8Array}
 */
export function encode(input) {
  /** @type {number[]} */
  const out = [];
  const scratch = new DataView(new ArrayBuffer(8));
  // A type byte, then `v` written by the DataView method `setter` in `n` bytes.
  const put = (type, setter, n, v) => {
    scratch[setter](0, v);
    out.push(type, ...new Uint8Array(scratch.buffer, 0, n));
  };
  // The head of a str, bin, array or map: its fix form below `fixLimit`, else 8/16/32 bits.
  const head = (size, fix, fixLimit, [t8, t16, t32]) => {
    if (size < fixLimit) out.push(fix | size);
    else if (t8 !== null && size <= 0xff) out.push(t8, size);
    else if (size <= 0xffff) put(t16, "setUint16", 2, size);
    else put(t32, "setUint32", 4, size);
  };
  const raw = (chunk) => {
    for (const byte of chunk) out.push(byte);
  };
  const int64 = (n) => put(n < 0n ? 0xd3 : 0xcf, n < 0n ? "setBigInt64" : "setBigUint64", 8, n);
  const integer = (n) => {
    if (n >= -32 && n <= 0x7f) out.push(n & 0xff);
    else if (n > 0xffffffff || n < -0x80000000) int64(BigInt(n));
    else if (n < 0) put(0xd2, "setInt32", 4, n);
    else if (n <= 0xff) out.push(0xcc, n);
    else if (n <= 0xffff) put(0xcd, "setUint16", 2, n);
    else put(0xce, "setUint32", 4, n);
  };
  function value(v) {
    if (v !== null && typeof v === "object" && typeof v.toJSON === "function") v = v.toJSON();
    if (v === null || v === undefined) out.push(0xc0);
    else if (typeof v === "boolean") out.push(v ? 0xc3 : 0xc2);
    else if (typeof v === "bigint") int64(v);
    else if (typeof v === "number") {
      if (Number.isSafeInteger(v)) integer(v);
      else put(0xcb, "setFloat64", 8, v);
    } else if (typeof v === "string") {
      const utf8 = utf8Encoder.encode(v);
      head(utf8.length, 0xa0, 32, [0xd9, 0xda, 0xdb]);
      raw(utf8);
    } else if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) {
      const chunk = ArrayBuffer.isView(v)
        ? new Uint8Array(v.buffer, v.byteOffset, v.byteLength)
        : new Uint8Array(v);
      head(chunk.length, 0, 0, [0xc4, 0xc5, 0xc6]);
      raw(chunk);
    } else if (Array.isArray(v)) {
      head(v.length, 0x90, 16, [null, 0xdc, 0xdd]);
      v.forEach((item) => value(item));
    } else if (typeof v === "object") {
      const entries = Object.entries(v).filter(
        ([, item]) => item !== undefined && typeof item !== "function",
      );
      head(entries.length, 0x80, 16, [null, 0xde, 0xdf]);
      for (const [key, item] of entries) {
        value(key);
        value(item);
      }
    } else throw new TypeError(`msgpack: cannot encode a ${typeof v}`);
  }
  value(input);
  return Uint8Array.from(out);
}
