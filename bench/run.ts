// Entry point of `npm run bench [-- name…]`: runs the named benches (mesh, batching, gateway, billing, gas, x402, weights, providers), all
// by default, one after the other. Each prints a table and one line per figure. Every child
// process is stopped when a bench ends, also when it fails or the run is interrupted.
import { stopAll } from './lib.ts'

const BENCHES: Record<string, () => Promise<void>> = {
  mesh: async () => (await import('./mesh-vs-direct.ts')).meshBench(),
  batching: async () => (await import('./batching.ts')).batchingBench(),
  gateway: async () => (await import('./gateway-cost.ts')).gatewayBench(),
  billing: async () => (await import('./billing.ts')).billingBench(),
  gas: async () => (await import('./settlement-gas.ts')).settlementGasBench(),
  x402: async () => (await import('./x402.ts')).x402Bench(),
  'local-read': async () => (await import('./local-read.ts')).localReadBench(),
  'admin-ws': async () => (await import('./admin-ws.ts')).adminWsBench(),
  weights: async () => (await import('./weights.ts')).weightsBench(),
  providers: async () => (await import('./providers.ts')).providersBench(),
}

const names = process.argv.slice(2)
const unknown = names.filter((n) => !(n in BENCHES))
if (unknown.length > 0) {
  console.error(`unknown bench: ${unknown.join(', ')} (choose from ${Object.keys(BENCHES).join(', ')})`)
  process.exit(2)
}

const started = Date.now()
let failed = false
for (const name of names.length > 0 ? names : Object.keys(BENCHES)) {
  const t = Date.now()
  try {
    await BENCHES[name]?.()
  } catch (err) {
    failed = true
    console.error(`\nbench ${name} failed:`, err)
  } finally {
    await stopAll()
  }
  console.log(`(${name}: ${((Date.now() - t) / 1000).toFixed(0)} s)\n`)
}
console.log(`done in ${((Date.now() - started) / 1000).toFixed(0)} s on ${new Date().toISOString().slice(0, 10)}`)
process.exit(failed ? 1 : 0)
