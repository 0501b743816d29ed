// The baseline server of the gateway-cost bench, in a process of its own: a one-route hono app on
// @hono/node-server answering GET /health with the same JSON as the gateway, and nothing else.
// Usage: node bin/run-ts.js bench/bare-hono-child.ts   → prints "listening <port>"
import type { AddressInfo } from 'node:net'
import { serve } from '@hono/node-server'
import { Hono } from 'hono'

const startedAt = Date.now()
const app = new Hono()
app.get('/health', (c) => c.json({ status: 'ok', uptime: Math.floor((Date.now() - startedAt) / 1000) }))

const server = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, (info: AddressInfo) => {
  process.stdout.write(`listening ${info.port}\n`)
})
process.on('SIGTERM', () => {
  server.close()
  process.exit(0)
})
// The bench going away (IPC closed) ends this process too.
process.on('disconnect', () => process.exit(0))
