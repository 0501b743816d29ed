// The floor of `providers`: the least a Node proxy can do in front of the upstream — node:http in,
// an undici keep-alive pool out, the body and the answer piped through untouched (no routing, no
// parsing, no auth, no billing). What it adds is what any gateway on this runtime and machine adds
// before doing anything of its own. Prints `listening PORT`.
// Usage: node bin/run-ts.js bench/providers-bare-proxy-child.ts UPSTREAM_ORIGIN
import { createServer } from 'node:http'
import { pipeline } from 'node:stream/promises'
import { Pool } from 'undici'
import { exitOnSignals } from './child-exit.ts'

const origin = process.argv[2] ?? 'http://127.0.0.1:1'
const pool = new Pool(origin, { connections: 256, pipelining: 1, keepAliveTimeout: 30_000 })

const server = createServer((req, res) => {
  void (async () => {
    try {
      const up = await pool.request({
        path: req.url ?? '/',
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: req.headers.authorization ?? '' },
        body: req,
      })
      res.writeHead(up.statusCode, { 'content-type': String(up.headers['content-type'] ?? 'application/json') })
      await pipeline(up.body, res)
    } catch {
      if (!res.headersSent) res.writeHead(502)
      res.end()
    }
  })()
})
server.keepAliveTimeout = 30_000
server.listen(0, '127.0.0.1', () => {
  const address = server.address()
  process.stdout.write(`listening ${typeof address === 'object' && address ? address.port : 0}\n`)
})

exitOnSignals(async () => {
  server.closeAllConnections()
  await new Promise<void>((r) => server.close(() => r()))
  await pool.close()
})
