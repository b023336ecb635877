// The official Node SDK as a server would use it: identify, track, flush. Run by
// test_node_sdk.py with one JSON argument; prints each event's answer as JSON.
import { init, identify, track, flush, Identify, Types } from '@amplitude/analytics-node';

const { apiKey, serverUrl, userId, profile, events } = JSON.parse(process.argv[2]);

await init(apiKey, {
  serverUrl,
  flushIntervalMillis: 600000, // nothing leaves on a timer: flush() below sends one batch
  flushQueueSize: 1000,
  flushMaxRetries: 2,
  logLevel: Types.LogLevel.Warn,
}).promise;

const change = new Identify();
for (const [key, value] of Object.entries(profile)) change.set(key, value);
const pending = [identify(change, { user_id: userId }).promise];
for (const e of events) {
  pending.push(track(e.type, e.properties, { user_id: userId, insert_id: e.insertId }).promise);
}
await flush().promise;
const results = await Promise.all(pending);
console.log(JSON.stringify(results.map((r) => ({ event_type: r.event.event_type, code: r.code, message: r.message }))));
// The SDK's flush timer and keep-alive agent would hold the process open: every answer
// is in, so leave now.
process.exit(0);
