// Subscribers for the admin-ws bench, in a process of their own: opens N admin WebSockets,
// authenticates each, counts the events they receive, and prints progress lines for the bench.
// Usage: node bin/run-ts.js bench/admin-ws-clients.ts URL TOKEN N
import { WebSocket } from 'ws'

const [url, token, count] = process.argv.slice(2)
const n = Number(count)
let authed = 0
let events = 0
const sockets: WebSocket[] = []
for (let i = 0; i < n; i++) {
  const ws = new WebSocket(url as string)
  ws.on('open', () => ws.send(JSON.stringify({ type: 'auth', token })))
  ws.on('message', (data) => {
    const type = (JSON.parse(String(data)) as { type: string }).type
    if (type === 'authenticated' && ++authed === n) console.log(`authenticated ${n}`)
    else if (type !== 'authenticated') events++
  })
  ws.on('error', (err) => console.error(`socket ${i}: ${err.message}`))
  sockets.push(ws)
}
setInterval(() => console.log(`events ${events}`), 500).unref()
process.on('SIGTERM', () => {
  for (const ws of sockets) ws.terminate()
  process.exit(0)
})
