// x402: what paying per request with x402 (HTTP 402 + USDC, verified by the facilitator before the work and
// settled alongside it) costs against paying with an API key, in one run, through one gateway.
//
// One devchain (anvil, automine, in its own process), one gateway process (bench/x402-gateway-child.ts: chain +
// x402 with the embedded facilitator + billing on) and one node process (`cluster node`, tiny synthetic model,
// 1 thread). A user with an API key and credit (admin HTTP API), and payers holding test USDC that sign
// EIP-3009 authorizations with @x402/core's x402Client + @x402/evm's ExactEvmScheme, as @x402/fetch does.
// Payments are signed BEFORE each timed block (each has a random nonce, so one payer signs any number), so
// client-side signing is not in the measured time; the 402 round trip that tells a new client the price is not
// in it either (a client that knows the price sends the payment with its first request) — both are shown apart.
//
//  (a) TTFT, streaming, max_tokens 4, interleaved pairs (key/x402, then x402/key, …) from the same client code:
//      request sent → first SSE chunk with content. The gateway's own time for facilitator.verify on each
//      x402 request is read from the gateway process (timing wrapper, see the child). Figures:
//      x402.ttft_added_p50_ms = p50(x402) − p50(key), x402.verify_p50_ms; goal: added ≤ verify + 5 ms.
//  (b) Throughput of paid calls, non-streaming, max_tokens 2, C concurrent clients, rounds x402/key/key/x402
//      (then key/x402/x402/key): x402.rps, key.rps, x402.rps_ratio. On this chain every x402 call also settles
//      a USDC transfer on anvil before its (non-streaming) answer is sent.
import { randomBytes } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import http from 'node:http'
import { join } from 'node:path'
import { decodePaymentRequiredHeader, encodePaymentSignatureHeader } from '@x402/core/http'
import type { PaymentRequired } from '@x402/core/types'
import { ExactEvmScheme } from '@x402/evm/exact/client'
import { x402Client } from '@x402/fetch'
import { type Address, keccak256, toHex } from 'viem'
import { type PrivateKeyAccount, privateKeyToAccount } from 'viem/accounts'
import { fundWallet, startDevChain, testAccounts } from '../src/chain/devchain.ts'
import {
  benchModel,
  type Child,
  CORES,
  cpuMs,
  fmt,
  foreignLoad,
  loadavg,
  median,
  QUIET_CORES,
  quantile,
  spawnClusterNode,
  spawnNode,
  stopAll,
  table,
  takeSseData,
  waitForModel,
  waitQuiet,
  withScope,
} from './lib.ts'
import type { RpcCounts, TimedCall, X402ChildChain, X402ChildMessage } from './x402-gateway-child.ts'

const MODEL = 'bench-tiny'
const PATH = '/v1/chat/completions'
const TTFT_ROUNDS = Number(process.env.BENCH_X402_TTFT_ROUNDS ?? 60)
const TTFT_MAX_TOKENS = 4
const BLOCK = 10 // TTFT pairs signed for, and waited quiet for, at a time
const TPUT_ROUNDS = Number(process.env.BENCH_X402_ROUNDS ?? 4)
const TPUT_SECONDS = Number(process.env.BENCH_X402_SECONDS ?? 2.5)
const CONCURRENCY = Number(process.env.BENCH_X402_CONCURRENCY ?? 8)
const TPUT_MAX_TOKENS = 2
const QUIET_MS = Math.min(5_000, Number(process.env.BENCH_QUIET_WAIT_MS ?? 5_000))
/** Goal (issue step 4, §5): x402 adds the verify call to TTFT and no more than 5 ms besides. */
const GOAL_SLACK_MS = 5

// ---------------------------------------------------------------------------------------------
// The HTTP client: node:http with a keep-alive agent, the same code for both ways of paying.

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 })

interface Reply {
  status: number
  headers: http.IncomingHttpHeaders
  /** ms from sending to the first SSE chunk with content (streams), or to the end of the body. */
  ttftMs: number
  doneMs: number
  body: string
}

function chatBody(stream: boolean, maxTokens: number): string {
  return JSON.stringify({
    model: MODEL,
    messages: [{ role: 'user', content: 'Write a haiku about paying per request.' }],
    max_tokens: maxTokens,
    temperature: 0,
    seed: 42,
    stream,
  })
}

/** One chat completion; for a stream, times the first content chunk; errors inside the stream throw. */
function post(base: string, headers: Record<string, string>, body: string, stream: boolean): Promise<Reply> {
  const url = new URL(PATH, base)
  return new Promise((resolve, reject) => {
    let first = -1
    let buf = ''
    let all = ''
    const req = http.request(
      url,
      {
        method: 'POST',
        agent,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers },
      },
      (resp) => {
        resp.setEncoding('utf8')
        resp.on('data', (d: string) => {
          const now = performance.now()
          all += d
          if (!stream || resp.statusCode !== 200) return
          const events = takeSseData(buf + d)
          buf = events.rest
          for (const data of events.data) {
            const chunk = JSON.parse(data) as {
              choices?: Array<{ delta: { content?: string } }>
              error?: { message: string }
            }
            if (chunk.error) return reject(new Error(`stream error: ${chunk.error.message}`))
            if (first < 0 && (chunk.choices?.[0]?.delta.content ?? '').length > 0) first = now - start
          }
        })
        resp.on('end', () => {
          const done = performance.now() - start
          if (stream && resp.statusCode === 200 && !all.includes('data: [DONE]')) {
            return reject(new Error('stream ended without [DONE]'))
          }
          resolve({
            status: resp.statusCode ?? 0,
            headers: resp.headers,
            ttftMs: first < 0 ? done : first,
            doneMs: done,
            body: all,
          })
        })
      },
    )
    req.on('error', reject)
    const start = performance.now()
    req.end(body)
  })
}

async function ok(reply: Promise<Reply>, what: string): Promise<Reply> {
  const r = await reply
  if (r.status !== 200) throw new Error(`${what}: HTTP ${r.status}: ${r.body.slice(0, 500)}`)
  return r
}

async function adminPost(base: string, adminKey: string, path: string, body: object): Promise<unknown> {
  const res = await fetch(new URL(path, base), {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${adminKey}` },
    body: JSON.stringify(body),
  })
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}: ${await res.text()}`)
  return res.json()
}

// ---------------------------------------------------------------------------------------------
// Processes

/** anvil, started by startDevChain as a child of this process (its pid, for the CPU and foreign-load meters). */
function anvilPid(): number {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid === process.pid && name === 'anvil') return Number(entry)
    } catch {
      // gone meanwhile
    }
  }
  throw new Error('anvil: no child process of ours named anvil')
}

interface Gateway {
  child: Child
  url: string
  multiaddrs: string[]
  apiKey: string
  payTo: Address
  facilitator: Address
  /** The gateway's timed calls and chain RPCs since the last take. */
  take(): Promise<{ calls: TimedCall[]; rpc: RpcCounts }>
  probe(): Promise<{ payments: number; scanMs: number }>
}

async function startX402Gateway(dir: string, chain: X402ChildChain): Promise<Gateway> {
  // BENCH_X402_CPU_PROF=<dir>: the gateway writes a V8 CPU profile there when it stops.
  const prof = process.env.BENCH_X402_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_X402_CPU_PROF] : []
  const child = spawnNode(
    'gateway',
    [...prof, 'bin/run-ts.js', 'bench/x402-gateway-child.ts', dir, JSON.stringify(chain)],
    { ipc: true },
  )
  const m = await child.waitFor(/^ready (.*)$/m)
  const ready = JSON.parse(m[1] as string) as Omit<Gateway, 'child' | 'take' | 'probe'>
  if (!ready.apiKey) throw new Error('gateway: no admin API key (the data dir was not fresh)')
  const ask = <T extends X402ChildMessage['type']>(type: 'take' | 'probe', reply: T) =>
    new Promise<Extract<X402ChildMessage, { type: T }>>((resolve) => {
      const on = (msg: X402ChildMessage): void => {
        if (msg.type !== reply) return
        child.proc.off('message', on)
        resolve(msg as Extract<X402ChildMessage, { type: T }>)
      }
      child.proc.on('message', on)
      child.proc.send({ type })
    })
  return {
    child,
    ...ready,
    take: async () => {
      const t = await ask('take', 'timings')
      return { calls: t.calls, rpc: t.rpc }
    },
    probe: async () => {
      const p = await ask('probe', 'probe')
      return { payments: p.payments, scanMs: p.scanMs }
    },
  }
}

// ---------------------------------------------------------------------------------------------
// Payments, signed ahead of the timed parts

/** A deterministic throw-away payer (same address every run). */
const payerAccount = (i: number): PrivateKeyAccount =>
  privateKeyToAccount(keccak256(toHex(`cluster x402 bench payer ${i}`)))

class Payments {
  private readonly clients: x402Client[]
  /** ms of client-side signing per payment, as measured while signing ahead. */
  readonly signMs: number[] = []

  constructor(
    payers: PrivateKeyAccount[],
    private readonly required: PaymentRequired,
  ) {
    const accepted = required.accepts[0]
    const network = accepted?.network as `${string}:${string}`
    // As test/e2e/x402.test.ts: the test USDC is not one of the library's default assets.
    this.clients = payers.map((p) =>
      new x402Client()
        .register(network, new ExactEvmScheme(p))
        .setSpendControls({ allowedAssets: [{ network, asset: accepted?.asset as string }] }),
    )
  }

  /** `count` PAYMENT-SIGNATURE header values from payer `payer` (each with a fresh random nonce). */
  async sign(payer: number, count: number): Promise<string[]> {
    const client = this.clients[payer % this.clients.length] as x402Client
    const out: string[] = []
    for (let i = 0; i < count; i++) {
      const t0 = performance.now()
      out.push(encodePaymentSignatureHeader(await client.createPaymentPayload(this.required)))
      this.signMs.push(performance.now() - t0)
    }
    return out
  }
}

// ---------------------------------------------------------------------------------------------
// (a) TTFT

interface TtftSample {
  ttftMs: number
  doneMs: number
  foreign: number
}

function addRpc(into: RpcCounts, from: RpcCounts): void {
  for (const [m, c] of Object.entries(from)) {
    const t = into[m] ?? { n: 0, ms: 0 }
    t.n += c.n
    t.ms += c.ms
    into[m] = t
  }
}

/** JSON-RPC requests to the chain per paid request, by method: `eth_getCode ×2.00 (0.61 ms)`, most first. */
function rpcLine(rpc: RpcCounts, requests: number): string {
  const all = Object.entries(rpc).sort((a, b) => b[1].n - a[1].n)
  const n = all.reduce((s, [, c]) => s + c.n, 0)
  return (
    `${fmt(n / requests)} per paid request: ` +
    all.map(([m, c]) => `${m} ×${fmt(c.n / requests)} (${fmt(c.ms / c.n)} ms)`).join(', ')
  )
}

const byWhat = (calls: TimedCall[], what: TimedCall['what']): number[] =>
  calls.filter((c) => c.what === what).map((c) => c.ms)

async function ttftBench(
  gw: Gateway,
  userKey: string,
  payments: Payments,
  procs: { gateway: number; node: number; anvil: number },
): Promise<void> {
  const pids = [procs.gateway, procs.node, procs.anvil]
  const keyHeaders = { authorization: `Bearer ${userKey}` }
  const body = chatBody(true, TTFT_MAX_TOKENS)
  const key: TtftSample[] = []
  const x402: TtftSample[] = []
  const calls: TimedCall[] = []
  const rpc: RpcCounts = {}
  const cpu = { key: { gateway: 0, anvil: 0, node: 0 }, x402: { gateway: 0, anvil: 0, node: 0 } }
  let settledHeaders = 0

  const one = async (side: 'key' | 'x402', headers: Record<string, string>, record: boolean): Promise<void> => {
    const c0 = { gateway: cpuMs(procs.gateway), anvil: cpuMs(procs.anvil), node: cpuMs(procs.node) }
    const others = foreignLoad(pids)
    const r = await ok(post(gw.url, headers, body, true), `${side} stream`)
    const foreign = others()
    if (!record) return
    const c = cpu[side]
    c.gateway += cpuMs(procs.gateway) - c0.gateway
    c.anvil += cpuMs(procs.anvil) - c0.anvil
    c.node += cpuMs(procs.node) - c0.node
    ;(side === 'key' ? key : x402).push({ ttftMs: r.ttftMs, doneMs: r.doneMs, foreign })
    if (side === 'x402') {
      if (r.headers['payment-response'] != null) settledHeaders++
      const t = await gw.take()
      calls.push(...t.calls)
      addRpc(rpc, t.rpc)
    }
  }

  // Warm-up: 5 pairs (also creates the payer's x402 account, a one-time write).
  const warm = await payments.sign(0, 5)
  for (const header of warm) {
    await one('key', keyHeaders, false)
    await one('x402', { 'payment-signature': header }, false)
  }
  await gw.take()

  for (let b = 0; b < TTFT_ROUNDS; b += BLOCK) {
    const n = Math.min(BLOCK, TTFT_ROUNDS - b)
    const headers = await payments.sign(0, n)
    await waitQuiet(pids, QUIET_MS)
    for (let i = 0; i < n; i++) {
      const pay = { 'payment-signature': headers[i] as string }
      if ((b + i) % 2 === 0) {
        await one('key', keyHeaders, true)
        await one('x402', pay, true)
      } else {
        await one('x402', pay, true)
        await one('key', keyHeaders, true)
      }
    }
  }

  // The 402 round trip a client pays once when it does not know the price yet (not in the figures).
  const rt402: number[] = []
  for (let i = 0; i < 20; i++) {
    const r = await post(gw.url, {}, body, true)
    if (r.status !== 402) throw new Error(`expected a 402, got ${r.status}`)
    rt402.push(r.doneMs)
  }

  const kt = key.map((s) => s.ttftMs)
  const xt = x402.map((s) => s.ttftMs)
  const diffs = xt.map((x, i) => x - (kt[i] ?? Number.NaN))
  const verify = byWhat(calls, 'verify')
  const record = byWhat(calls, 'recordX402Payment')
  const scan = byWhat(calls, 'hasX402Payment')
  const settle = byWhat(calls, 'settle')
  const n = key.length
  const quiet = key.map((s, i) => s.foreign < QUIET_CORES && (x402[i]?.foreign ?? 1) < QUIET_CORES)
  const nQuiet = quiet.filter(Boolean).length
  const row = (name: string, v: number[]): string[] => [
    name,
    fmt(quantile(v, 0.1)),
    fmt(median(v)),
    fmt(quantile(v, 0.9)),
    fmt(Math.min(...v)),
  ]
  console.log(
    `\nx402 (a) TTFT, streaming, tiny preset, max_tokens ${TTFT_MAX_TOKENS}, ${n} interleaved pairs ` +
      `(${nQuiet} quiet: others < ${QUIET_CORES} cores on both sides)`,
  )
  table(
    ['', 'p10 ms', 'p50 ms', 'p90 ms', 'min ms'],
    [
      row('TTFT, API key', kt),
      row('TTFT, x402 (payment pre-signed)', xt),
      row('paired difference x402 − key', diffs),
      row('  in the gateway: facilitator.verify', verify),
      row('  in the gateway: ledger.recordX402Payment', record),
      row('  in the gateway: ledger.hasX402Payment (replay check)', scan),
      row(
        'stream end (done), API key',
        key.map((s) => s.doneMs),
      ),
      row(
        'stream end (done), x402',
        x402.map((s) => s.doneMs),
      ),
      row('  in the gateway: facilitator.settle', settle),
      row('402 round trip (not in TTFT)', rt402),
      row('client signing (not in TTFT)', payments.signMs),
    ],
  )
  const per = (side: 'key' | 'x402') =>
    `gateway ${fmt(cpu[side].gateway / n)}, node ${fmt(cpu[side].node / n)}, anvil ${fmt(cpu[side].anvil / n)}`
  console.log(
    `  CPU per request (ms, whole answer incl. settlement): key: ${per('key')}; x402: ${per('x402')}` +
      `\n  chain RPCs from the gateway (incl. the deposit watcher's polling): ${rpcLine(rpc, n)}` +
      `\n  ${settledHeaders}/${n} x402 streams carried a payment-response header (none expected: a stream's headers ` +
      `leave before its settlement; the settlement is awaited before [DONE]); load avg ${loadavg()}`,
  )
  if (nQuiet >= 10 && nQuiet < n) {
    const qk = kt.filter((_, i) => quiet[i])
    const qx = xt.filter((_, i) => quiet[i])
    console.log(`  the ${nQuiet} quiet pairs only: added p50 ${fmt(median(qx) - median(qk))} ms`)
  }
  if (nQuiet < n / 2) console.log('  fewer than half the pairs were quiet: read the figures as noisy')
  const added = median(xt) - median(kt)
  const v = median(verify)
  const goal = v + GOAL_SLACK_MS
  console.log(
    `x402.ttft_added_p50_ms = ${fmt(added)} (goal ≤ verify ${fmt(v)} + ${GOAL_SLACK_MS} = ${fmt(goal)}) — ` +
      `${added <= goal ? 'met' : 'NOT met'}`,
  )
  console.log(`x402.verify_p50_ms = ${fmt(v)}`)
}

// ---------------------------------------------------------------------------------------------
// (b) Throughput

interface TputSample {
  rps: number
  foreign: number
  cpu: { gateway: number; node: number; anvil: number }
  calls: TimedCall[]
  rpc: RpcCounts
}

async function throughputBench(
  gw: Gateway,
  userKey: string,
  payments: Payments,
  procs: { gateway: number; node: number; anvil: number },
): Promise<void> {
  const pids = [procs.gateway, procs.node, procs.anvil]
  const body = chatBody(false, TPUT_MAX_TOKENS)

  /** `count` calls from CONCURRENCY clients; x402: client i pays with payer i, signed before the clock starts. */
  const sample = async (side: 'key' | 'x402', count: number, quietFirst = true): Promise<TputSample> => {
    const queues: string[][] = []
    if (side === 'x402') {
      for (let i = 0; i < CONCURRENCY; i++) {
        queues.push(await payments.sign(i, Math.ceil(count / CONCURRENCY)))
      }
    }
    if (quietFirst) await waitQuiet(pids, QUIET_MS)
    await gw.take()
    const c0 = { gateway: cpuMs(procs.gateway), node: cpuMs(procs.node), anvil: cpuMs(procs.anvil) }
    const others = foreignLoad(pids)
    let settled = 0
    const worker = async (i: number): Promise<number> => {
      let done = 0
      const per = Math.ceil(count / CONCURRENCY)
      for (let k = 0; k < per; k++) {
        const headers: Record<string, string> =
          side === 'key'
            ? { authorization: `Bearer ${userKey}` }
            : { 'payment-signature': (queues[i] as string[])[k] as string }
        const r = await ok(post(gw.url, headers, body, false), `${side} call`)
        if (side === 'x402' && r.headers['payment-response'] != null) settled++
        done++
      }
      return done
    }
    const t0 = performance.now()
    const done = (await Promise.all(Array.from({ length: CONCURRENCY }, (_, i) => worker(i)))).reduce((a, b) => a + b)
    const wall = (performance.now() - t0) / 1000
    const foreign = others()
    if (side === 'x402' && settled !== done) throw new Error(`only ${settled} of ${done} x402 answers were settled`)
    return {
      rps: done / wall,
      foreign,
      cpu: {
        gateway: (cpuMs(procs.gateway) - c0.gateway) / done,
        node: (cpuMs(procs.node) - c0.node) / done,
        anvil: (cpuMs(procs.anvil) - c0.anvil) / done,
      },
      ...(await gw.take()),
    }
  }

  // Warm-up, which also sizes the samples to about TPUT_SECONDS each.
  await sample('key', CONCURRENCY * 50, false)
  await sample('x402', CONCURRENCY * 8, false)
  const calib = {
    key: (await sample('key', CONCURRENCY * 16, false)).rps,
    x402: (await sample('x402', CONCURRENCY * 8, false)).rps,
  }
  const size = (rps: number): number =>
    Math.max(CONCURRENCY * 4, Math.ceil((rps * TPUT_SECONDS) / CONCURRENCY) * CONCURRENCY)
  const count = { key: size(calib.key), x402: size(calib.x402) }

  const key: TputSample[] = []
  const x402: TputSample[] = []
  const ratios: number[] = []
  const quietRound: boolean[] = []
  /** "x402 rps/key rps" of each round (means of its two samples each). */
  const perRound: string[] = []
  for (let r = 0; r < TPUT_ROUNDS; r++) {
    const order: Array<'key' | 'x402'> = r % 2 === 0 ? ['x402', 'key', 'key', 'x402'] : ['key', 'x402', 'x402', 'key']
    const got: Record<'key' | 'x402', TputSample[]> = { key: [], x402: [] }
    for (const side of order) got[side].push(await sample(side, count[side]))
    key.push(...got.key)
    x402.push(...got.x402)
    const sum = (s: TputSample[]): number => s.reduce((a, b) => a + b.rps, 0)
    ratios.push(sum(got.x402) / sum(got.key))
    perRound.push(`${fmt(sum(got.x402) / 2, 0)}/${fmt(sum(got.key) / 2, 0)}`)
    quietRound.push([...got.key, ...got.x402].every((s) => s.foreign < QUIET_CORES))
  }

  const calls = x402.flatMap((s) => s.calls)
  const cpuRow = (s: TputSample[], k: 'gateway' | 'node' | 'anvil'): string => fmt(median(s.map((x) => x.cpu[k])))
  const throughputRow = (label: string, s: TputSample[]): string[] => [
    label,
    fmt(Math.min(...s.map((x) => x.rps)), 1),
    fmt(median(s.map((x) => x.rps)), 1),
    fmt(Math.max(...s.map((x) => x.rps)), 1),
    cpuRow(s, 'gateway'),
    cpuRow(s, 'node'),
    cpuRow(s, 'anvil'),
    fmt(median(s.map((x) => x.foreign))),
  ]
  console.log(
    `\nx402 (b) paid calls per second, non-streaming, max_tokens ${TPUT_MAX_TOKENS}, ${CONCURRENCY} concurrent clients, ` +
      `${TPUT_ROUNDS} rounds of x402/key/key/x402 (alternating), ~${TPUT_SECONDS} s per sample ` +
      `(${count.x402} x402 calls, ${count.key} key calls)`,
  )
  table(
    [
      '',
      'min rps',
      'p50 rps',
      'max rps',
      'gateway CPU ms/call',
      'node CPU ms/call',
      'anvil CPU ms/call',
      'others (cores)',
    ],
    [throughputRow('API key', key), throughputRow('x402 (settled on anvil before each answer)', x402)],
  )
  const q = (what: TimedCall['what']): string => {
    const v = byWhat(calls, what)
    return `${fmt(median(v))} (p90 ${fmt(quantile(v, 0.9))})`
  }
  console.log(
    `  in the gateway under this load, ms p50: verify ${q('verify')}, settle ${q('settle')}, ` +
      `recordX402Payment ${q('recordX402Payment')}, replay check ${q('hasX402Payment')}`,
  )
  const rpc: RpcCounts = {}
  for (const s of x402) addRpc(rpc, s.rpc)
  console.log(
    `  chain RPCs from the gateway during the x402 samples: ${rpcLine(rpc, calls.filter((c) => c.what === 'verify').length)}`,
  )
  console.log(
    `  per-round ratios x402/key: ${ratios.map((x, i) => `${fmt(x, 3)}${quietRound[i] ? '' : '*'} (${perRound[i]})`).join(' ')}` +
      `  (* = others used ≥ ${QUIET_CORES} cores during a sample of the round); load avg ${loadavg()}`,
  )
  const quietRatios = ratios.filter((_, i) => quietRound[i])
  const useQuiet = quietRatios.length >= Math.ceil(TPUT_ROUNDS / 2)
  if (!useQuiet) console.log(`  only ${quietRatios.length} quiet rounds: figure from all rounds, read it as noisy`)
  console.log(`x402.rps = ${fmt(median(x402.map((s) => s.rps)), 1)} (paid calls/s, each settled on the local chain)`)
  console.log(`key.rps = ${fmt(median(key.map((s) => s.rps)), 1)}`)
  console.log(`x402.rps_ratio = ${fmt(median(useQuiet ? quietRatios : ratios), 3)} (x402/key, same run)`)
}

// ---------------------------------------------------------------------------------------------

export async function x402Bench(): Promise<void> {
  console.log(`== x402 vs API key (${CORES} cores) ==`)
  const model = await benchModel('tiny')
  await withScope('x402', async (dir) => {
    const t0 = performance.now()
    const chain = await startDevChain()
    try {
      const procs = { anvil: anvilPid(), gateway: 0, node: 0 }
      const gw = await startX402Gateway(join(dir, 'gw'), {
        rpcUrl: chain.rpcUrl,
        chainId: chain.chainId,
        usdc: chain.usdc,
        escrow: chain.escrow,
        multicall3: chain.multicall3,
      })
      procs.gateway = gw.child.pid
      const bootstrap = gw.multiaddrs.find((a) => a.includes('/tcp/') && !a.includes('/ws'))
      if (bootstrap == null) throw new Error(`gateway: no TCP multiaddr in ${gw.multiaddrs.join(' ')}`)
      const node = spawnClusterNode(dir, bootstrap, {
        model,
        modelId: MODEL,
        threads: 1,
        slots: 8,
        maxQueue: 256,
        payoutAddress: (testAccounts()[3] as { address: Address }).address,
      })
      procs.node = node.pid
      // Payers with test USDC ($100 each, the price is $0.003), minted while the node starts.
      const payers = Array.from({ length: CONCURRENCY }, (_, i) => payerAccount(i))
      await Promise.all(payers.map((p) => fundWallet(chain, p.address, { usdc: 100_000_000n })))
      await node.waitFor(/^node \S+/m)
      await waitForModel({ url: gw.url, apiKey: gw.apiKey }, MODEL, 30_000)
      // A user with an API key and credit, through the admin API.
      const email = `bench-${randomBytes(4).toString('hex')}@example.com`
      const user = (await adminPost(gw.url, gw.apiKey, '/api/admin/accounts', { email })) as { apiKey: string }
      await adminPost(gw.url, gw.apiKey, '/api/admin/credit', { email, amount: '1000' })
      // The price, from a 402, as a client learns it.
      const first = await post(gw.url, {}, chatBody(true, TTFT_MAX_TOKENS), true)
      if (first.status !== 402) throw new Error(`expected 402 without a key, got ${first.status}`)
      const required = decodePaymentRequiredHeader(first.headers['payment-required'] as string)
      const accepted = required.accepts[0]
      console.log(
        `devchain ${chain.rpcUrl} (anvil pid ${procs.anvil}); gateway pid ${procs.gateway} (chain + x402 + billing, ` +
          `payTo ${gw.payTo}, facilitator ${gw.facilitator}); node pid ${procs.node} (tiny, 1 thread, 8 slots); ` +
          `price ${accepted?.amount} USDC units on ${accepted?.network}; ${CONCURRENCY} payers; ` +
          `set up in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
      )
      const payments = new Payments(payers, required)
      await ttftBench(gw, user.apiKey, payments, procs)
      await throughputBench(gw, user.apiKey, payments, procs)
      const probe = await gw.probe()
      console.log(
        `  after the run: the replay check (ledger.hasX402Payment, on every paid request) takes ` +
          `${fmt(probe.scanMs, 3)} ms with ${probe.payments} payments recorded`,
      )
    } finally {
      agent.destroy()
      // The gateway and the node first (the gateway's watcher polls the chain), then anvil.
      await stopAll()
      await chain.stop()
    }
  })
}
