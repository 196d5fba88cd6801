// Real Node `ws` clients for tests/test_node_clients.py, one per permessage-deflate offer,
// all on one URL. Each event is a line of JSON on stdout; each line on stdin is a command
// ({"client": name, "send": text}); end of stdin closes every socket (code 1000).
import readline from "node:readline";
import WebSocket from "ws";

const [url] = process.argv.slice(2);

// The perMessageDeflate option of each client: what its Sec-WebSocket-Extensions offers.
const OFFERS = {
  // Node's default: "permessage-deflate; client_max_window_bits"
  default: true,
  // Asks the server to drop its context after every message.
  "no-context-takeover": { serverNoContextTakeover: true, clientNoContextTakeover: true },
  // Asks for a small server window.
  "small-window": { serverMaxWindowBits: 10 },
  uncompressed: false,
};

function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

const sockets = {};
for (const [name, perMessageDeflate] of Object.entries(OFFERS)) {
  const socket = new WebSocket(url, { perMessageDeflate });
  sockets[name] = socket;
  socket.on("upgrade", (response) => {
    emit({ client: name, extensions: response.headers["sec-websocket-extensions"] ?? "" });
  });
  socket.on("message", (data, isBinary) => {
    emit({ client: name, binary: isBinary, message: JSON.parse(data.toString()) });
  });
  socket.on("error", (error) => emit({ client: name, error: String(error) }));
  socket.on("close", (code) => emit({ client: name, closed: code }));
}

const commands = readline.createInterface({ input: process.stdin });
commands.on("line", (line) => {
  const command = JSON.parse(line);
  sockets[command.client].send(command.send);
});
commands.on("close", () => {
  for (const socket of Object.values(sockets)) socket.close(1000);
});
