// The JavaScript CloudEvents SDK (npm `cloudevents` 10) as a producer and as a subscriber, for the SDK
// round-trip test (tests/tests/cross_process/t43_sdk_round_trip.rs). Same commands and fingerprint as ../python_sdk.py:
//
//   node sdk.js produce URL EVENTS_JSON    every event twice, `HTTP.binary` and `HTTP.structured`, ids
//                                          `<id>.js-bin` / `<id>.js-json`; prints one HTTP status per request
//   node sdk.js subscribe PORT OUTFILE EVENTS_JSON
//                                          parse every POST with `HTTP.toEvent`, append {"id", "fingerprint"}
//   node sdk.js expect EVENTS_JSON         each event as this SDK parses it when sent to it directly
//
// Header values: Node writes and reads header strings as ISO-8859-1 and refuses characters beyond U+00FF, so
// a producer passes a value's UTF-8 bytes as a latin1 string, and a subscriber re-reads headers as UTF-8, as
// every Node user must for non-ASCII headers (docs/ingress.md).
"use strict";
const fs = require("fs");
const http = require("http");
const { CloudEvent, HTTP } = require("cloudevents");

function load(path, producer) {
  const events = JSON.parse(fs.readFileSync(path, "utf8")).events;
  return events.filter((e) => !producer || !e.producers || e.producers.includes(producer));
}

function eventOf(spec, id) {
  const attributes = {};
  for (const [k, v] of Object.entries(spec)) {
    if (k !== "producers") attributes[k] = v;
  }
  attributes.id = id;
  // data_base64 is passed as it is: the SDK keeps it as the event's binary data.
  return new CloudEvent(attributes, false);
}

function latin1OfUtf8(value) {
  return typeof value === "string" ? Buffer.from(value, "utf8").toString("latin1") : value;
}

function post(url, message) {
  const headers = {};
  for (const [k, v] of Object.entries(message.headers)) headers[k] = latin1OfUtf8(String(v));
  // A Buffer body: with a string body Node writes the header block as UTF-8, with a Buffer as latin1.
  let body = message.body;
  if (body instanceof Uint8Array || Buffer.isBuffer(body)) body = Buffer.from(body);
  else body = Buffer.from(typeof body === "string" ? body : JSON.stringify(body), "utf8");
  return new Promise((resolve) => {
    const request = http.request(url, { method: "POST", headers }, (response) => {
      let text = "";
      response.on("data", (chunk) => (text += chunk));
      response.on("end", () => resolve(response.statusCode === 202 ? "202" : `${response.statusCode} ${text}`));
    });
    request.on("error", (error) => resolve(`error ${error.message}`));
    request.end(body);
  });
}

async function produce(url, path) {
  for (const spec of load(path, "js")) {
    const binary = eventOf(spec, `${spec.id}.js-bin`);
    if (binary.data_base64 !== undefined) {
      // Binary mode carries bytes as the body.
      const bytes = Buffer.from(spec.data_base64, "base64");
      const { data_base64: _, ...rest } = binary.toJSON();
      console.log(await post(url, HTTP.binary(new CloudEvent({ ...rest, data: bytes }, false))));
    } else {
      console.log(await post(url, HTTP.binary(binary)));
    }
    console.log(await post(url, HTTP.structured(eventOf(spec, `${spec.id}.js-json`))));
  }
}

function canonical(value) {
  return typeof value === "boolean" ? (value ? "true" : "false") : String(value);
}

function normalisedData(event) {
  let data = event.data;
  if (data === undefined && event.data_base64 !== undefined) data = Buffer.from(event.data_base64, "base64");
  if (data === undefined || data === null) return null;
  if (Buffer.isBuffer(data)) return { bytes: data.toString("base64") };
  if (ArrayBuffer.isView(data)) return { bytes: Buffer.from(Array.from(data)).toString("base64") };
  if (typeof data === "string") return { bytes: Buffer.from(data, "utf8").toString("base64") };
  return { json: JSON.stringify(data) };
}

function comparedNames(spec) {
  return Object.keys(spec)
    .filter((k) => !["data", "data_base64", "producers", "id", "comment"].includes(k))
    .sort();
}

function fingerprint(event, names) {
  const attributes = {};
  for (const name of names) attributes[name] = event[name] === undefined ? null : canonical(event[name]);
  return { attributes, data: normalisedData(event) };
}

function expect(path) {
  for (const spec of load(path)) {
    const message = HTTP.structured(eventOf(spec, spec.id));
    const event = HTTP.toEvent({ headers: message.headers, body: message.body });
    console.log(JSON.stringify({ id: spec.id, fingerprint: fingerprint(event, comparedNames(spec)) }));
  }
}

function utf8Header(value) {
  const text = Buffer.from(value, "latin1").toString("utf8");
  return text.includes("\ufffd") ? value : text;
}

function subscribe(port, outfile, eventsPath) {
  const specs = Object.fromEntries(load(eventsPath).map((s) => [s.id, s]));
  const server = http.createServer((request, response) => {
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => {
      const headers = {};
      for (const [k, v] of Object.entries(request.headers)) headers[k] = utf8Header(String(v));
      let body = Buffer.concat(chunks);
      const type = (headers["content-type"] || "").toLowerCase();
      // The SDK parses JSON and text bodies from strings; other bodies stay bytes.
      if (type.includes("json") || type.startsWith("text/")) body = body.toString("utf8");
      try {
        const event = HTTP.toEvent({ headers, body });
        const base = String(event.id).split(".")[0];
        const line = JSON.stringify({ id: event.id, fingerprint: fingerprint(event, comparedNames(specs[base] || {})) });
        fs.appendFileSync(outfile, line + "\n");
        response.writeHead(202, { "content-length": "0" });
        response.end();
      } catch (error) {
        const text = JSON.stringify({ error: String(error && error.message ? error.message : error) });
        response.writeHead(400, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
        response.end(text);
      }
    });
  });
  server.listen(Number(port), "127.0.0.1", () => console.log(`listening on ${server.address().port}`));
}

const [command, a, b, c] = process.argv.slice(2);
if (command === "produce") produce(a, b);
else if (command === "subscribe") subscribe(a, b, c);
else if (command === "expect") expect(a);
else {
  console.error(`unknown command ${command}`);
  process.exit(2);
}
