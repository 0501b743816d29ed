// Billing cost: chat throughput through a gateway that bills every call (reserve + settle on the
// ledger) vs the same gateway code with billing off, side by side, both in front of one node.
// Also the ledger alone: charges/s on one account under contention vs raw batched writes.
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import { type RunningGateway, startGateway } from '../gateway/gateway.ts'
import { LevelLedger } from '../src/ledger/level-ledger.ts'
import { synthesizeGguf } from '../src/models/synth.ts'
import { median } from './lib.ts'

const ROOT = join(import.meta.dirname, '..')

const MODEL = 'bench-billing'
const ROUNDS = 8
const REQUESTS = 200
const CONCURRENCY = 16

async function keyFor(gw: RunningGateway, email: string): Promise<string> {
  const { account, apiKey } = await gw.accounts.register(email, null)
  await gw.ledger.credit(account.id, 1_000_000_000n, { type: 'credit' })
  return apiKey
}

/** Requests/s for REQUESTS calls at CONCURRENCY through one gateway. */
async function throughput(gw: RunningGateway, key: string): Promise<number> {
  let next = 0
  const body = JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 })
  const worker = async (): Promise<void> => {
    while (next++ < REQUESTS) {
      const res = await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
        body,
      })
      if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`)
      await res.arrayBuffer()
    }
  }
  const t0 = performance.now()
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  return REQUESTS / ((performance.now() - t0) / 1000)
}

export async function billingBench(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'cluster-bench-billing-'))
  try {
    const model = join(dir, 'tiny.gguf')
    await synthesizeGguf({ preset: 'tiny', out: model, seed: 1 })
    const limits = { capacity: 1_000_000, refillPerSecond: 1_000_000 }
    const on = await startGateway({
      dataDir: join(dir, 'on'),
      port: 0,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      rateLimit: limits,
    })
    const off = await startGateway({
      dataDir: join(dir, 'off'),
      port: 0,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      rateLimit: limits,
      billing: false,
    })
    // The node in a process of its own, as in production: the two gateways share this one.
    const node = spawn(
      process.execPath,
      [
        join(ROOT, 'bin', 'cluster.js'),
        'node',
        '--data-dir',
        join(dir, 'node'),
        '--listen',
        '/ip4/127.0.0.1/tcp/0',
        ...[...on.multiaddrs(), ...off.multiaddrs()].flatMap((a) => ['--bootstrap', a]),
        '--model',
        model,
        '--model-id',
        MODEL,
        '--threads',
        '1',
        '--slots',
        '8',
        '--max-queue',
        '256',
        '--gpu',
        'off',
      ],
      { stdio: 'ignore' },
    )
    const nodeExited = new Promise((r) => node.once('exit', r))
    try {
      while (on.directory.nodesServing(MODEL).length === 0 || off.directory.nodesServing(MODEL).length === 0) {
        await new Promise((r) => setTimeout(r, 50))
      }
      const keyOn = await keyFor(on, 'bench-on@example.com')
      const keyOff = await keyFor(off, 'bench-off@example.com')
      // Warm-up until the JIT and both connections settle.
      for (let i = 0; i < 3; i++) {
        await throughput(on, keyOn)
        await throughput(off, keyOff)
      }
      const ratios: number[] = []
      const rows: string[] = []
      for (let r = 0; r < ROUNDS; r++) {
        // On-off-off-on in every round: a drift within the round hits both sides alike.
        const a1 = await throughput(on, keyOn)
        const b1 = await throughput(off, keyOff)
        const b2 = await throughput(off, keyOff)
        const a2 = await throughput(on, keyOn)
        const ratio = (a1 + a2) / (b1 + b2)
        ratios.push(ratio)
        rows.push(
          `  round ${r + 1}: billing on ${((a1 + a2) / 2).toFixed(0)} req/s, off ${((b1 + b2) / 2).toFixed(0)} req/s, ratio ${ratio.toFixed(3)}`,
        )
      }
      console.log(
        `chat throughput, ${REQUESTS} calls × 4 per round (on, off, off, on) × ${ROUNDS} rounds at concurrency ${CONCURRENCY} (tiny model, max_tokens 4)`,
      )
      console.log(rows.join('\n'))
      console.log(`billing.throughput_ratio = ${median(ratios).toFixed(3)} (goal ≥ 0.95)`)
    } finally {
      node.kill('SIGTERM')
      await nodeExited
      await on.stop()
      await off.stop()
    }
    await ledgerBench(dir)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/** Charges/s (reserve + settle) on ONE account from 64 concurrent callers vs raw level batches. */
async function ledgerBench(dir: string): Promise<void> {
  const CHARGES = 4000
  const ledger = new LevelLedger(join(dir, 'ledger'))
  await ledger.open()
  const account = await ledger.createAccount({ email: 'hot@example.com', role: 'user', passwordHash: '' })
  await ledger.credit(account.id, 10n ** 15n, { type: 'credit' })
  let n = 0
  const charger = async (): Promise<void> => {
    while (n++ < CHARGES) {
      const hold = await ledger.reserve(account.id, 100n, `r${n}`)
      await ledger.settle(hold.id, 60n, { model: 'm', requestId: `r${n}`, tokensIn: 10, tokensOut: 5 })
    }
  }
  let t0 = performance.now()
  await Promise.all(Array.from({ length: 64 }, charger))
  const chargesPerSec = CHARGES / ((performance.now() - t0) / 1000)
  await ledger.close()

  // The floor: the same number of two-write batches, one after the other, straight into level.
  const raw = new Level<string, string>(join(dir, 'raw'), { valueEncoding: 'utf8' })
  await raw.open()
  t0 = performance.now()
  for (let i = 0; i < CHARGES * 2; i++) {
    await raw.batch([
      { type: 'put', key: `a!${i % 7}`, value: 'x'.repeat(200) },
      { type: 'put', key: `t!${i}`, value: 'y'.repeat(200) },
    ])
  }
  const rawPerSec = CHARGES / ((performance.now() - t0) / 1000)
  await raw.close()
  console.log(
    `ledger: ${chargesPerSec.toFixed(0)} charges/s on one account (64 concurrent callers); raw level pairs of batches: ${rawPerSec.toFixed(0)}/s`,
  )
  console.log(`ledger.charges_vs_raw_ratio = ${(chargesPerSec / rawPerSec).toFixed(3)}`)
}
