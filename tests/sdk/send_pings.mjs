// A quiet Node backend: the official @segment/analytics-node at its default settings
// (flushAt 15, flushInterval 10 s) sends one `Ping` track call every INTERVAL_MS, COUNT times,
// to HOST (a Tripwire collector). Each event's messageId is printed as a JSON line once the SDK
// reports it delivered; the script exits when every event is delivered (1 on any error).
//   node send_pings.mjs HOST WRITE_KEY USER_ID [COUNT=15] [INTERVAL_MS=2000]
import { Analytics } from '@segment/analytics-node'

const [host, writeKey, userId, count = '15', intervalMs = '2000'] = process.argv.slice(2)
if (!host || !writeKey || !userId) {
  console.error('usage: node send_pings.mjs HOST WRITE_KEY USER_ID [COUNT] [INTERVAL_MS]')
  process.exit(2)
}
const total = Number(count)
const analytics = new Analytics({ writeKey, host }) // nothing else: the SDK's own batching
let delivered = 0
let failed = false

analytics.on('error', (err) => {
  console.error(`analytics-node error: ${err?.code ?? ''} ${err?.reason ?? err}`)
  failed = true
})

function ping(i) {
  analytics.track({ userId, event: 'Ping', properties: { seq: i } }, (err, ctx) => {
    if (err) {
      console.error(`Ping ${i} not delivered: ${err?.reason ?? err}`)
      failed = true
    } else {
      console.log(JSON.stringify({ seq: i, messageId: ctx.event.messageId, timestamp: ctx.event.timestamp }))
    }
    delivered += 1
    if (delivered === total) {
      analytics.closeAndFlush().then(() => process.exit(failed ? 1 : 0))
    }
  })
}

for (let i = 0; i < total; i += 1) {
  setTimeout(() => ping(i), i * Number(intervalMs))
}
