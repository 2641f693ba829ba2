// node's own http server, for what the other servers do not send: close-delimited bodies,
// chunked bodies with trailers, informational (1xx) responses. Serves files of the static tree.
//
//   node node_server.js PORT ROOT
//
//   /static/FILE           the file, Content-Length, keep-alive (node's defaults)
//   /close/FILE            the file with neither Content-Length nor chunked coding: ends at close
//   /connection-close/FILE the file with Content-Length and "Connection: close"
//   /trailers/FILE         the file in chunks of 16 KB, then trailers x-content-sha256 and x-size
//   /early-hints/FILE      103 Early Hints, then the file
//   /processing/FILE       102 Processing, then the file
//   /informational/N/FILE  N interim responses (103, 102 alternating), then the file
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const http = require("http");
const path = require("path");

const port = Number(process.argv[2]);
const root = process.argv[3];

function fileOf(name, res) {
  // Only plain names inside ROOT: the tests never ask for anything else.
  if (!/^[A-Za-z0-9._-]+$/.test(name)) {
    res.writeHead(400).end();
    return null;
  }
  try {
    return fs.readFileSync(path.join(root, name));
  } catch (err) {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
    return null;
  }
}

function sendWithLength(res, data, extra) {
  res.writeHead(200, {
    "content-type": "application/octet-stream",
    "content-length": data.length,
    ...extra,
  });
  res.end(data);
}

const routes = {
  static(req, res, [name]) {
    const data = fileOf(name, res);
    if (data) sendWithLength(res, data, {});
  },
  close(req, res, [name]) {
    const data = fileOf(name, res);
    if (!data) return;
    res.statusCode = 200;
    res.setHeader("content-type", "application/octet-stream");
    // With both removed, node frames the body by closing the connection.
    res.removeHeader("content-length");
    res.removeHeader("transfer-encoding");
    res.write(data.subarray(0, data.length >> 1));
    res.end(data.subarray(data.length >> 1));
  },
  "connection-close"(req, res, [name]) {
    const data = fileOf(name, res);
    if (data) sendWithLength(res, data, { connection: "close" });
  },
  trailers(req, res, [name]) {
    const data = fileOf(name, res);
    if (!data) return;
    res.writeHead(200, {
      "content-type": "application/octet-stream",
      "transfer-encoding": "chunked",
      trailer: "x-content-sha256, x-size",
    });
    for (let at = 0; at < data.length; at += 16384) {
      res.write(data.subarray(at, at + 16384));
    }
    res.addTrailers({
      "x-content-sha256": crypto.createHash("sha256").update(data).digest("hex"),
      "x-size": String(data.length),
    });
    res.end();
  },
  "early-hints"(req, res, [name]) {
    const data = fileOf(name, res);
    if (!data) return;
    res.writeEarlyHints({ link: "</1k.bin>; rel=preload; as=fetch" });
    sendWithLength(res, data, {});
  },
  processing(req, res, [name]) {
    const data = fileOf(name, res);
    if (!data) return;
    res.writeProcessing();
    sendWithLength(res, data, {});
  },
  informational(req, res, [count, name]) {
    const data = fileOf(name, res);
    if (!data) return;
    for (let i = 0; i < Number(count); i++) {
      if (i % 2 === 0) res.writeEarlyHints({ link: `</${i}>; rel=preload` });
      else res.writeProcessing();
    }
    sendWithLength(res, data, {});
  },
};

const server = http.createServer((req, res) => {
  const [, route, ...rest] = new URL(req.url, "http://x").pathname.split("/");
  const handler = Object.hasOwn(routes, route) ? routes[route] : null;
  if (!handler) {
    res.writeHead(404, { "content-type": "text/plain" }).end("no such route\n");
    return;
  }
  // Read (and drop) any request body before answering, as a real handler would.
  req.resume();
  req.on("end", () => handler(req, res, rest));
});
server.listen(port, "127.0.0.1");
process.on("SIGTERM", () => process.exit(0));
