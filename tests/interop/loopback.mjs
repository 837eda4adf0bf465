// Start @modelcontextprotocol/server-everything bound to 127.0.0.1 only.
//
// Usage: PORT=NNNN node tests/interop/loopback.mjs [streamableHttp|sse]
//
// The server's HTTP transports call express's `app.listen(PORT, cb)` with no host, which
// binds every interface, and the package has no option for the host. Before the server
// module is loaded, this wrapper patches `net.Server.prototype.listen` (which `http.Server`
// inherits and `app.listen` ends in) so that any TCP listen in this process gets host
// 127.0.0.1, whatever host it asked for. Pipe/handle listens are left alone. Once the
// socket is bound, the bound address is checked, and the process exits if it is not
// 127.0.0.1.
import net from "node:net";

const HOST = "127.0.0.1";
const originalListen = net.Server.prototype.listen;

function isPort(value) {
  return (
    typeof value === "number" || (typeof value === "string" && /^\d+$/.test(value))
  );
}

net.Server.prototype.listen = function listen(...args) {
  const callback = typeof args[args.length - 1] === "function" ? args.pop() : undefined;
  const [first] = args;
  let options;
  if (isPort(first)) {
    // listen(port[, host][, backlog][, cb])
    const backlog = args.find((a, i) => i > 0 && typeof a === "number");
    options = { port: Number(first), host: HOST };
    if (backlog !== undefined) options.backlog = backlog;
  } else if (first === undefined || first === null) {
    // listen([cb]): a random port on all interfaces by default
    options = { port: 0, host: HOST };
  } else if (typeof first === "object" && !("fd" in first) && !("_handle" in first) && first.path === undefined) {
    // listen(options[, cb]) with a TCP port
    options = { ...first, host: HOST };
  } else {
    // A Unix socket path or an existing handle: not a network listener.
    return originalListen.apply(this, callback ? [...args, callback] : args);
  }
  this.once("listening", () => {
    const address = this.address();
    if (!address || typeof address !== "object" || address.address !== HOST) {
      console.error(`loopback.mjs: server bound ${JSON.stringify(address)}, not ${HOST}; exiting`);
      process.exit(70);
    }
    console.error(`loopback.mjs: listening on http://${HOST}:${address.port}`);
  });
  return callback ? originalListen.call(this, options, callback) : originalListen.call(this, options);
};

// server-everything's launcher reads the transport from process.argv[2]; this script is
// argv[1], so `node loopback.mjs streamableHttp` reaches it as the launcher expects.
if (!process.argv[2]) process.argv.splice(2, 0, "streamableHttp");

await import("@modelcontextprotocol/server-everything/dist/index.js");
