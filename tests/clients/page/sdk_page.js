// The page's own script: the official Browser SDK as a site would set it up, plus the
// two calls test_browser.py makes through the DevTools protocol.
import * as amplitude from '@amplitude/analytics-browser';

// Amplitude's documented page-exit pattern: whatever is still queued leaves by
// navigator.sendBeacon, which outlives the page.
window.addEventListener('pagehide', () => {
  amplitude.setTransport('beacon');
  amplitude.flush();
});

window.forwarderPage = {
  // Initialise the SDK against the daemon; nothing leaves on a timer (the interval is
  // long), so the test decides when a batch is sent and by which transport.
  async start(apiKey, serverUrl, userId) {
    await amplitude.init(apiKey, userId, {
      serverUrl,
      transport: 'fetch',
      flushIntervalMillis: 600000,
      flushQueueSize: 1000,
      flushMaxRetries: 2,
      autocapture: false,
      fetchRemoteConfig: false,
      enableDiagnostics: false,
      logLevel: amplitude.Types.LogLevel.Warn,
    }).promise;
  },

  // identify + track, then one flush by fetch; resolves to each event's answer code.
  async sendByFetch(profile, events) {
    const identify = new amplitude.Identify();
    for (const [key, value] of Object.entries(profile)) identify.set(key, value);
    const pending = [amplitude.identify(identify).promise];
    for (const e of events) {
      pending.push(amplitude.track(e.type, e.properties, { insert_id: e.insertId }).promise);
    }
    await amplitude.flush().promise;
    const results = await Promise.all(pending);
    return results.map((r) => ({ event_type: r.event.event_type, code: r.code, message: r.message }));
  },

  // Queue events only: the pagehide listener sends them when the test leaves the page.
  queueForPageExit(profile, events) {
    const identify = new amplitude.Identify();
    for (const [key, value] of Object.entries(profile)) identify.set(key, value);
    amplitude.identify(identify);
    for (const e of events) {
      amplitude.track(e.type, e.properties, { insert_id: e.insertId });
    }
    return events.length;
  },
};
