// The gateway of the benches, in a process of its own: startGateway exactly as `cluster gateway`
// runs it (libp2p peer, Directory, router, the whole HTTP app with its middleware: body limits,
// API-key auth, rate limiting), with two bench settings the CLI has no flags for:
//  - billing off (GatewayConfig.billing = false, "off only for benchmarks"): calls are
//    authenticated but not charged, so no ledger writes are timed;
//  - a rate limit too large to refuse anything (the limiter still runs on every request).
// Prints one line, `ready {"url", "multiaddrs", "apiKey"}`, the key being the first admin's
// (a fresh data dir creates it). Usage: node bin/run-ts.js bench/gateway-child.ts DATA_DIR
import { readFile } from 'node:fs/promises'
import { startGateway } from '../gateway/gateway.ts'
import { exitOnSignals } from './child-exit.ts'

const dataDir = process.argv[2]
if (!dataDir) {
  console.error('usage: gateway-child.ts DATA_DIR')
  process.exit(2)
}
const gw = await startGateway({
  dataDir,
  listen: ['/ip4/127.0.0.1/tcp/0'],
  port: 0,
  host: '127.0.0.1',
  billing: false,
  rateLimit: { capacity: 1_000_000_000, refillPerSecond: 1_000_000_000 },
})
const apiKey = gw.adminKeyFile ? (await readFile(gw.adminKeyFile, 'utf8')).trim() : ''
process.stdout.write(`ready ${JSON.stringify({ url: gw.url, multiaddrs: gw.multiaddrs(), apiKey })}\n`)

exitOnSignals(() => gw.stop())
