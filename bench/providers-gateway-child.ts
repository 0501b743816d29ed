// A gateway of `providers`, in a process of its own: startGateway as `cluster gateway` runs it, with
// one external provider (groq) whose base URL is the bench's upstream, no provider keys from the
// environment, and a rate limit that never refuses (the limiter still runs on every request).
// Billing is `on` (the real path: every call reserves its maximum cost in the ledger and settles
// from the provider's usage) or `off` (GatewayConfig.billing = false, "off only for benchmarks":
// pure routing overhead). Either way the calls use a user's API key with a balance, so both
// gateways authenticate the same kind of key.
//
// IPC: {type: 'stats'} → {type: 'stats', spent, held, balance} (the ledger's totals in smallest
// units, as strings), to check that billing really charged every call.
// Prints `ready {"url", "apiKey"}`.
// Usage: node bin/run-ts.js bench/providers-gateway-child.ts DATA_DIR UPSTREAM_BASE_URL on|off
import { startGateway } from '../gateway/gateway.ts'
import { exitOnSignals } from './child-exit.ts'

export type ProvidersGatewayMessage = { type: 'stats'; spent: string; held: string; balance: string }

const [dataDir, baseUrl, billing] = process.argv.slice(2)
if (!dataDir || !baseUrl || (billing !== 'on' && billing !== 'off')) {
  console.error('usage: providers-gateway-child.ts DATA_DIR UPSTREAM_BASE_URL on|off')
  process.exit(2)
}
const gw = await startGateway({
  dataDir,
  listen: ['/ip4/127.0.0.1/tcp/0'],
  port: 0,
  host: '127.0.0.1',
  billing: billing === 'on',
  rateLimit: { capacity: 1_000_000_000, refillPerSecond: 1_000_000_000 },
  providers: { groq: { apiKey: 'bench-upstream-key', baseUrl } },
  env: {},
})
const { account, apiKey } = await gw.accounts.register('bench-providers@example.com', null)
// $1,000,000 of credit: far more than any run can spend.
await gw.ledger.credit(account.id, 1_000_000_000_000n, { type: 'credit' })

process.on('message', (msg: { type?: string }) => {
  if (msg?.type !== 'stats') return
  const t = gw.ledger.moneyTotals()
  const reply: ProvidersGatewayMessage = {
    type: 'stats',
    spent: String(t.spent),
    held: String(t.held),
    balance: String(t.balance),
  }
  process.send?.(reply)
})

process.stdout.write(`ready ${JSON.stringify({ url: gw.url, apiKey })}\n`)

exitOnSignals(() => gw.stop())
