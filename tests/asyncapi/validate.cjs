// Validates an AsyncAPI document with the AsyncAPI parser and its Avro schema parser.
// Usage: node validate.cjs <node_modules folder> <document>. Prints one JSON object:
// {"errors": [...], "warnings": [...], "channels": {...}} and exits 1 when the parser found errors.
const path = require("path");
const modules = process.argv[2];
const { Parser, fromFile } = require(path.join(modules, "@asyncapi/parser"));
const { AvroSchemaParser } = require(path.join(modules, "@asyncapi/avro-schema-parser"));

async function main() {
  const parser = new Parser({ schemaParsers: [AvroSchemaParser()] });
  const { document, diagnostics } = await fromFile(parser, process.argv[3]).parse();
  // Severity 0 is an error, 1 a warning (Spectral's levels).
  const shown = (d) => `${d.code}: ${d.message} at ${(d.path || []).join(".")}`;
  const result = {
    errors: diagnostics.filter((d) => d.severity === 0).map(shown),
    warnings: diagnostics.filter((d) => d.severity === 1).map(shown),
    channels: {},
  };
  if (document) {
    for (const channel of document.channels()) {
      const messages = {};
      for (const message of channel.messages()) {
        const payload = message.payload();
        messages[message.id()] = {
          schemaFormat: message.schemaFormat(),
          // The Avro record, turned into JSON Schema by the Avro parser: its field names.
          fields: payload && payload.properties() ? Object.keys(payload.properties()) : [],
          headers: message.headers() && message.headers().properties() ? Object.keys(message.headers().properties()) : [],
        };
      }
      result.channels[channel.id()] = { address: channel.address(), messages };
    }
  }
  console.log(JSON.stringify(result));
  process.exit(result.errors.length ? 1 : 0);
}

main().catch((error) => { console.error(String(error && error.stack || error)); process.exit(2); });
