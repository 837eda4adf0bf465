// Preload (`node --import ./loopback.mjs ...`): every TCP listener in this process binds 127.0.0.1.
//
// The conformance suite's scenario servers call `server.listen(0)` / `app.listen(0)` with no host, which binds every
// interface, and the package has no option for the host. This patches `net.Server.prototype.listen` (which
// `http.Server` inherits and express's `app.listen` ends in) so that any TCP listen gets host 127.0.0.1 whatever it
// asked for; pipe and handle listens are left alone. Once bound, the address is checked and the process exits (70) if
// it is not 127.0.0.1. Same approach as tests/interop/loopback.mjs, without importing a server.
import net from "node:net";

const HOST = "127.0.0.1";
const originalListen = net.Server.prototype.listen;

function isPort(value) {
  return typeof value === "number" || (typeof value === "string" && /^\d+$/.test(value));
}

net.Server.prototype.listen = function listen(...args) {
  const callback = typeof args[args.length - 1] === "function" ? args.pop() : undefined;
  const [first] = args;
  let port;
  let backlog;
  if (isPort(first)) {
    // listen(port[, host][, backlog][, cb])
    port = Number(first);
    backlog = args.find((a, i) => i > 0 && typeof a === "number");
  } else if (first === undefined || first === null) {
    // listen([cb]): a random port
    port = 0;
  } else if (typeof first === "object" && !("fd" in first) && !("_handle" in first) && first.path === undefined) {
    // listen(options[, cb]) with a TCP port
    port = Number(first.port ?? 0);
    backlog = first.backlog;
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
  });
  if (callback) this.once("listening", callback);
  // The suite reads `server.address().port` right after `listen(0)` returns. A listen with a host goes through an
  // asynchronous DNS lookup (address() is still null then), so bind the way listen(port) does without a host, which is
  // synchronous: Server#_listen2 (node's setupListenHandle) with an explicit IPv4 address. It emits "listening" (or
  // "error") on the next tick, as listen() does.
  if (typeof this._listen2 !== "function") {
    console.error("loopback.mjs: this node has no net.Server#_listen2; cannot force 127.0.0.1");
    process.exit(70);
  }
  this._listen2(HOST, port, 4, backlog);
  return this;
};
