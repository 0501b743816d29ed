// The gateway of the x402 bench, in a process of its own: startGateway as `npm start` runs it on its
// local chain — on-chain settlement against the escrow (`chain`), x402 with the embedded facilitator
// (its own anvil test key pays the gas, payTo = the gateway's address) and billing ON — with one bench
// setting the CLI has no flag for: a rate limit that never refuses (the limiter still runs).
// The escrow settler runs once an hour here (npm start: every 10 s), so its batch never lands in a sample.
//
// Measurement only, no behaviour changed: the facilitator handed to the gateway is the embedded one
// wrapped to time each verify and settle, and the ledger instance the gateway (and its X402Gate) uses
// gets timing wrappers on the x402 calls made on a request's path (hasX402Payment, x402Account,
// recordX402Payment), and the global fetch is wrapped to count the JSON-RPC requests sent to the chain.
// The bench collects those over IPC: {type: 'take'} → {type: 'timings', …} (and clears them);
// {type: 'probe'} → how long one hasX402Payment() (the replay check) takes with the payments recorded so far.
//
// Prints `ready {"url", "multiaddrs", "apiKey", "payTo", "facilitator"}`.
// Usage: node bin/run-ts.js bench/x402-gateway-child.ts DATA_DIR '{"rpcUrl","chainId","usdc","escrow","multicall3"}'
import { readFile } from 'node:fs/promises'
import type { Address, Hex } from 'viem'
import { privateKeyToAccount } from 'viem/accounts'
import { startGateway } from '../gateway/gateway.ts'
import { testAccounts } from '../src/chain/devchain.ts'
import { embeddedFacilitator, type Facilitator } from '../src/payments/x402.ts'
import { exitOnSignals } from './child-exit.ts'

export interface X402ChildChain {
  rpcUrl: string
  chainId: number
  usdc: Address
  escrow: Address
  multicall3: Address
}

/** One timed call in the gateway process: what, and how long it took (ms). */
export interface TimedCall {
  what: 'verify' | 'settle' | 'hasX402Payment' | 'x402Account' | 'recordX402Payment'
  ms: number
  ok: boolean
}

/** JSON-RPC calls the gateway process made to the chain, per method: how many, and their wall time. */
export type RpcCounts = Record<string, { n: number; ms: number }>

export type X402ChildMessage =
  | { type: 'timings'; calls: TimedCall[]; rpc: RpcCounts }
  | { type: 'probe'; payments: number; scanMs: number }

const [dataDir, chainJson] = process.argv.slice(2)
if (!dataDir || !chainJson) {
  console.error("usage: x402-gateway-child.ts DATA_DIR '{chain}'")
  process.exit(2)
}
const chain = JSON.parse(chainJson) as X402ChildChain
const accounts = testAccounts()
// As test/e2e/x402.test.ts: anvil account 1 is the gateway (escrow signer, and payTo), 5 the facilitator.
const gatewayKey = (accounts[1] as { privateKey: Hex }).privateKey
const facilitatorKey = (accounts[5] as { privateKey: Hex }).privateKey
const payTo = privateKeyToAccount(gatewayKey).address

const calls: TimedCall[] = []

async function timed<T>(what: TimedCall['what'], run: () => Promise<T>, okOf?: (r: T) => boolean): Promise<T> {
  const t0 = performance.now()
  try {
    const result = await run()
    calls.push({ what, ms: performance.now() - t0, ok: okOf?.(result) ?? true })
    return result
  } catch (err) {
    calls.push({ what, ms: performance.now() - t0, ok: false })
    throw err
  }
}

// Counts the JSON-RPC requests this process sends to the chain (viem's http transport calls the global
// fetch on each request): the facilitator's, the x402 gate's and the deposit watcher's alike.
let rpc: RpcCounts = {}
const originalFetch = globalThis.fetch
globalThis.fetch = async (input, init) => {
  const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url
  if (!url.startsWith(chain.rpcUrl) || typeof init?.body !== 'string') return originalFetch(input, init)
  const body = JSON.parse(init.body) as { method?: string } | Array<{ method?: string }>
  const methods = Array.isArray(body) ? body.map((b) => b.method ?? '?') : [body.method ?? '?']
  const t0 = performance.now()
  try {
    return await originalFetch(input, init)
  } finally {
    const ms = performance.now() - t0
    for (const m of methods) {
      const c = rpc[m] ?? { n: 0, ms: 0 }
      c.n++
      c.ms += ms / methods.length
      rpc[m] = c
    }
  }
}

const embedded = embeddedFacilitator({
  rpcUrl: chain.rpcUrl,
  chainId: chain.chainId,
  privateKey: facilitatorKey,
  multicall3: chain.multicall3,
})
const facilitator: Facilitator = {
  verify: (payment, requirements) =>
    timed(
      'verify',
      () => embedded.verify(payment, requirements),
      (r) => r.isValid,
    ),
  settle: (payment, requirements) =>
    timed(
      'settle',
      () => embedded.settle(payment, requirements),
      (r) => r.success,
    ),
}

const gw = await startGateway({
  dataDir,
  listen: ['/ip4/127.0.0.1/tcp/0'],
  port: 0,
  host: '127.0.0.1',
  rateLimit: { capacity: 1_000_000_000, refillPerSecond: 1_000_000_000 },
  log: (line) => process.stderr.write(`[gateway] ${line}\n`),
  chain: {
    rpcUrl: chain.rpcUrl,
    chainId: chain.chainId,
    usdc: chain.usdc,
    escrow: chain.escrow,
    signerKey: gatewayKey,
    confirmations: 0,
    pollIntervalMs: 500,
    settleIntervalMs: 3_600_000,
  },
  x402: {
    settings: {
      network: `eip155:${chain.chainId}`,
      asset: chain.usdc,
      assetDomain: { name: 'USD Coin', version: '2' },
      payTo,
      maxTimeoutSeconds: 60,
    },
    facilitator,
    rpcUrl: chain.rpcUrl,
  },
})

// Timing wrappers on the ledger instance the gateway uses (own properties shadow the class's methods).
const ledger = gw.ledger as unknown as Record<string, (...args: unknown[]) => unknown>
for (const what of ['x402Account', 'recordX402Payment'] as const) {
  const original = (ledger[what] as (...args: unknown[]) => Promise<unknown>).bind(gw.ledger)
  ledger[what] = (...args: unknown[]) => timed(what, () => original(...args))
}
const originalLookup = gw.ledger.hasX402Payment.bind(gw.ledger)
ledger.hasX402Payment = (...args: unknown[]) => {
  const t0 = performance.now()
  const result = originalLookup(...(args as Parameters<typeof originalLookup>))
  calls.push({ what: 'hasX402Payment', ms: performance.now() - t0, ok: true })
  return result
}

process.on('message', (msg: { type: string }) => {
  if (msg.type === 'take') {
    const out: X402ChildMessage = { type: 'timings', calls: calls.splice(0), rpc }
    rpc = {}
    process.send?.(out)
  } else if (msg.type === 'probe') {
    const times: number[] = []
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now()
      originalLookup(gw.chain?.client.address ?? '0x', `0x${'00'.repeat(32)}`)
      times.push(performance.now() - t0)
    }
    const payments = gw.ledger.x402Payments().length
    times.sort((a, b) => a - b)
    const out: X402ChildMessage = { type: 'probe', payments, scanMs: times[2] as number }
    process.send?.(out)
  }
})

const apiKey = gw.adminKeyFile ? (await readFile(gw.adminKeyFile, 'utf8')).trim() : ''
process.stdout.write(
  `ready ${JSON.stringify({ url: gw.url, multiaddrs: gw.multiaddrs(), apiKey, payTo, facilitator: embedded.address })}\n`,
)

exitOnSignals(() => gw.stop())
