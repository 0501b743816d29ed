// providers: what the gateway adds in front of an external provider, against calling the provider
// directly, side by side in one run.
//
// Processes (each its own): the upstream (bench/providers-upstream-child.ts: a minimal
// OpenAI-compatible chat endpoint on node:http that answers at once), and two gateways
// (bench/providers-gateway-child.ts: startGateway with the provider `groq` pointed at that upstream),
// one with billing OFF (pure routing overhead) and one with billing ON (the real path: an API key with
// a balance, the maximum cost reserved in the level ledger, settled from the provider's usage).
// The client is this process (node:http, one keep-alive agent per target): three targets —
//   direct: POST <upstream>/v1/chat/completions, model llama-3.3-70b-versatile;
//   off/on: POST <gateway>/v1/chat/completions, model llama-3.3-70b-instruct, provider groq (the
//           gateway maps it to llama-3.3-70b-versatile; the upstream refuses any other model).
//
// Four modes: plain (non-streaming) and stream, each at concurrency 1 and 32. Per mode: a warm-up,
// then ROUNDS rounds; each round waits (≤ 5 s) for a quiet half-second, then runs one block per
// target in a rotated order (every target takes every position alike), each block opened by an
// unmeasured burst of `concurrency` requests (keep-alive sockets re-established) and then N timed
// requests from `concurrency` workers. Latency = client start → end of the body (plain), TTFT =
// start → the first SSE event with content (stream). Every answer is checked: plain — status 200
// and the upstream's content; stream — the role event, the N content events in order (t0 … t15),
// the finish event, no usage event (the client does not ask for it: the gateway asks the upstream
// for it and strips it), then [DONE]; a missing content event counts as a dropped frame.
//
// Figures (billing on = the real path, which the goal applies to; billing off shown alike):
//   providers.added_p50_ms_c1 / _c32 = p50(gateway) − p50(direct), goal ≤ 1 ms
//   providers.added_p99_ms_c1 / _c32 = p99(gateway) − p99(direct), goal ≤ 5 ms
//   providers.ratio_p50_c1 … = p50(gateway) / p50(direct) (the figure side by side)
//   providers.stream.ttft_added_p50_ms_c1 … (TTFT, same goals), providers.stream.dropped_frames = 0
// The percentiles pool the quiet rounds' samples when at least half the rounds were quiet (others
// < QUIET_CORES during all three blocks), else every round's (and the output says so).
import http from 'node:http'
import { join } from 'node:path'
import {
  type Child,
  CORES,
  cpuMs,
  figure,
  fmt,
  foreignLoad,
  HOST,
  loadavg,
  median,
  QUIET_CORES,
  quantile,
  spawnNode,
  table,
  takeSseData,
  waitQuiet,
  withScope,
} from './lib.ts'
import type { ProvidersGatewayMessage } from './providers-gateway-child.ts'

const OUR_MODEL = 'llama-3.3-70b-instruct'
const UPSTREAM_MODEL = 'llama-3.3-70b-versatile'
const PROVIDER = 'groq'
const UPSTREAM_KEY = 'bench-upstream-key'
const ROUNDS = Number(process.env.BENCH_PROV_ROUNDS ?? 8)
/** Timed requests per target per round, at concurrency 1 and at 32. */
const N1 = Number(process.env.BENCH_PROV_N1 ?? 250)
const N32 = Number(process.env.BENCH_PROV_N32 ?? 500)
const CHUNKS = Number(process.env.BENCH_PROV_CHUNKS ?? 16)
const WARMUP = Number(process.env.BENCH_PROV_WARMUP ?? 400)
/** BENCH_PROV_MODES=plain1,plain32,stream1,stream32 (default all): which modes to run. */
const MODES = process.env.BENCH_PROV_MODES?.split(',')
const QUIET_MS = Math.min(5_000, Number(process.env.BENCH_QUIET_WAIT_MS ?? 5_000))
const GOAL_P50_MS = 1
const GOAL_P99_MS = 5

type TargetName = 'direct' | 'bare' | 'off' | 'on'
const TARGETS: readonly TargetName[] = ['direct', 'bare', 'off', 'on']
const LABEL: Record<TargetName, string> = {
  direct: 'direct (upstream)',
  bare: 'bare Node proxy (floor)',
  off: 'gateway, billing off',
  on: 'gateway, billing on',
}
/** Targets compared with direct: the floor (a bare Node proxy) and our gateway both ways. */
const PROXIES = ['bare', 'off', 'on'] as const

interface Target {
  name: TargetName
  url: URL
  agent: http.Agent
  headers: Record<string, string>
  plainBody: string
  streamBody: string
  /** The gateway process (for its CPU time); none for direct. */
  child?: Child
}

const MESSAGES = [{ role: 'user', content: 'Say hello in a few words.' }]

function makeTarget(name: TargetName, base: string, apiKey: string, child?: Child): Target {
  const body = (stream: boolean): string =>
    JSON.stringify({
      model: name === 'direct' || name === 'bare' ? UPSTREAM_MODEL : OUR_MODEL,
      ...(name === 'direct' || name === 'bare' ? {} : { provider: PROVIDER }),
      messages: MESSAGES,
      ...(stream ? { stream: true } : {}),
    })
  return {
    name,
    url: new URL('/v1/chat/completions', base),
    agent: new http.Agent({ keepAlive: true, maxSockets: 64 }),
    headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
    plainBody: body(false),
    streamBody: body(true),
    ...(child ? { child } : {}),
  }
}

// ---------------------------------------------------------------------------------------------
// One request of each kind: the same client code for every target.

interface Sample {
  /** Plain: start → end of body. Stream: start → first content event. */
  ms: number
  /** Stream: start → end of the response. */
  totalMs: number
  ok: boolean
  /** Stream: content events expected but not received (or received out of order). */
  dropped: number
  /** What was wrong, for the first failures shown. */
  problem?: string
  provider?: string | undefined
}

const PLAIN_CONTENT = 'Hello from the upstream.'

function post(t: Target, body: string, onResponse: (res: http.IncomingMessage, start: number) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const start = performance.now()
    const req = http.request(
      t.url,
      {
        method: 'POST',
        agent: t.agent,
        headers: { ...t.headers, 'content-length': String(Buffer.byteLength(body)) },
      },
      (res) => {
        onResponse(res, start)
        res.on('end', () => resolve())
        res.on('error', reject)
      },
    )
    req.on('error', reject)
    req.end(body)
  })
}

async function plainOnce(t: Target): Promise<Sample> {
  let sample: Sample = { ms: Number.NaN, totalMs: Number.NaN, ok: false, dropped: 0 }
  await post(t, t.plainBody, (res, start) => {
    let text = ''
    res.setEncoding('utf8')
    res.on('data', (d: string) => {
      text += d
    })
    res.on('end', () => {
      const ms = performance.now() - start
      let ok = res.statusCode === 200
      let problem: string | undefined
      try {
        const body = JSON.parse(text) as { choices?: Array<{ message?: { content?: string } }> }
        if (body.choices?.[0]?.message?.content !== PLAIN_CONTENT) ok = false
      } catch {
        ok = false
      }
      if (!ok) problem = `HTTP ${res.statusCode}: ${text.slice(0, 200)}`
      sample = {
        ms,
        totalMs: ms,
        ok,
        dropped: 0,
        provider: res.headers['x-cluster-provider'] as string | undefined,
        ...(problem ? { problem } : {}),
      }
    })
  })
  return sample
}

async function streamOnce(t: Target): Promise<Sample> {
  let sample: Sample = { ms: Number.NaN, totalMs: Number.NaN, ok: false, dropped: 0 }
  await post(t, t.streamBody, (res, start) => {
    let first = -1
    let buf = ''
    let raw = ''
    let role = false
    let next = 0 // the content event expected next (t0, t1, …)
    let received = 0
    let finish = false
    let usage = false
    let doneSeen = false
    let problem: string | undefined
    res.setEncoding('utf8')
    res.on('data', (d: string) => {
      const now = performance.now()
      if (res.statusCode !== 200) {
        raw += d
        return
      }
      buf += d
      if (buf.includes('data: [DONE]')) doneSeen = true
      const events = takeSseData(buf)
      buf = events.rest
      for (const data of events.data) {
        try {
          const chunk = JSON.parse(data) as {
            choices: Array<{ delta: { role?: string; content?: string }; finish_reason: string | null }>
            usage?: unknown
          }
          const choice = chunk.choices[0]
          if (chunk.usage != null) usage = true
          if (choice == null) continue
          if (choice.delta.role === 'assistant') role = true
          const content = choice.delta.content ?? ''
          if (content.length > 0) {
            if (first < 0) first = now - start
            if (content === `t${next} `) next++
            received++
          }
          if (choice.finish_reason != null) finish = true
        } catch {
          problem ??= `unparsable event: ${data.slice(0, 100)}`
        }
      }
    })
    res.on('end', () => {
      const totalMs = performance.now() - start
      if (res.statusCode !== 200) problem = `HTTP ${res.statusCode}: ${raw.slice(0, 200)}`
      else if (!role) problem ??= 'no role event'
      else if (next !== CHUNKS || received !== CHUNKS) problem ??= `${received} content events, ${next} in order`
      else if (!finish) problem ??= 'no finish event'
      else if (usage) problem ??= 'a usage event the client did not ask for'
      else if (!doneSeen) problem ??= 'no [DONE]'
      sample = {
        ms: first,
        totalMs,
        ok: problem == null,
        dropped: res.statusCode === 200 ? CHUNKS - next : CHUNKS,
        provider: res.headers['x-cluster-provider'] as string | undefined,
        ...(problem ? { problem } : {}),
      }
    })
  })
  return sample
}

// ---------------------------------------------------------------------------------------------
// Blocks and rounds

interface Block {
  samples: Sample[]
  foreign: number
  /** The gateway process's CPU time per request (µs), from /proc; NaN for direct. */
  cpuUsPerReq: number
  wallMs: number
  /** TCP connections the upstream accepted during the timed requests. */
  upstreamConnections: number
}

type Kind = 'plain' | 'stream'

async function runRequests(t: Target, kind: Kind, n: number, concurrency: number): Promise<Sample[]> {
  const once = kind === 'plain' ? plainOnce : streamOnce
  const out: Sample[] = []
  let started = 0
  const worker = async (): Promise<void> => {
    while (started < n) {
      started++
      try {
        out.push(await once(t))
      } catch (err) {
        out.push({ ms: Number.NaN, totalMs: Number.NaN, ok: false, dropped: CHUNKS, problem: String(err) })
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker))
  return out
}

/** The upstream's counters (IPC), read outside the timed part. */
type UpstreamStats = () => Promise<{ connections: number; requests: number }>

async function block(
  t: Target,
  kind: Kind,
  n: number,
  concurrency: number,
  pids: number[],
  upstream: UpstreamStats,
): Promise<Block> {
  // Unmeasured: re-opens the keep-alive sockets an idle pause may have closed (the gateway's
  // server closes idle ones after 5 s), so no timed request pays for a TCP connect.
  await runRequests(t, kind, concurrency, concurrency)
  const before = await upstream()
  const others = foreignLoad(pids)
  const cpu0 = t.child ? cpuMs(t.child.pid) : 0
  const t0 = performance.now()
  const samples = await runRequests(t, kind, n, concurrency)
  const wallMs = performance.now() - t0
  const cpu1 = t.child ? cpuMs(t.child.pid) : 0
  const foreign = others()
  const after = await upstream()
  return {
    samples,
    foreign,
    cpuUsPerReq: t.child ? ((cpu1 - cpu0) * 1000) / n : Number.NaN,
    wallMs,
    upstreamConnections: after.connections - before.connections,
  }
}

/** Orders of the targets, rotated per round (and reversed): each target takes each position alike. */
const ORDERS: TargetName[][] = TARGETS.flatMap((_, i) => {
  const rotated = [...TARGETS.slice(i), ...TARGETS.slice(0, i)]
  return [rotated, [...rotated].reverse()]
})

interface ModeResult {
  kind: Kind
  concurrency: number
  rounds: Array<Record<TargetName, Block>>
  quiet: boolean[]
  useQuiet: boolean
  /** Timed samples per target from the rounds used. */
  pooled: Record<TargetName, Sample[]>
}

async function runMode(
  targets: Record<TargetName, Target>,
  kind: Kind,
  concurrency: number,
  n: number,
  pids: number[],
  upstream: UpstreamStats,
): Promise<ModeResult> {
  // Warm-up: JIT every process and the client on this kind of request.
  for (const name of TARGETS) await runRequests(targets[name], kind, WARMUP, concurrency)
  const rounds: Array<Record<TargetName, Block>> = []
  const quiet: boolean[] = []
  for (let r = 0; r < ROUNDS; r++) {
    await waitQuiet(pids, QUIET_MS)
    const got: Partial<Record<TargetName, Block>> = {}
    for (const name of ORDERS[r % ORDERS.length] as TargetName[]) {
      got[name] = await block(targets[name], kind, n, concurrency, pids, upstream)
    }
    const round = got as Record<TargetName, Block>
    rounds.push(round)
    quiet.push(TARGETS.every((name) => round[name].foreign < QUIET_CORES))
  }
  const useQuiet = quiet.filter(Boolean).length >= Math.ceil(ROUNDS / 2)
  const pooled = Object.fromEntries(
    TARGETS.map((name) => [name, rounds.filter((_, i) => !useQuiet || quiet[i]).flatMap((r) => r[name].samples)]),
  ) as Record<TargetName, Sample[]>
  return { kind, concurrency, rounds, quiet, useQuiet, pooled }
}

// ---------------------------------------------------------------------------------------------
// Reporting

interface UpstreamCounters {
  type: 'stats'
  connections: number
  requests: number
}

const okMs = (samples: Sample[]): number[] => samples.filter((s) => s.ok).map((s) => s.ms)

interface Added {
  p50: number
  p99: number
  ratioP50: number
  ratioP99: number
}

function added(m: ModeResult, name: (typeof PROXIES)[number]): Added {
  const d = okMs(m.pooled.direct)
  const g = okMs(m.pooled[name])
  const dp50 = quantile(d, 0.5)
  const dp99 = quantile(d, 0.99)
  const gp50 = quantile(g, 0.5)
  const gp99 = quantile(g, 0.99)
  return { p50: gp50 - dp50, p99: gp99 - dp99, ratioP50: gp50 / dp50, ratioP99: gp99 / dp99 }
}

function report(m: ModeResult): void {
  const what = m.kind === 'plain' ? 'latency (start → end of body)' : 'TTFT (start → first content event)'
  const n = m.pooled.direct.length
  const nQuiet = m.quiet.filter(Boolean).length
  console.log(
    `\n${m.kind === 'plain' ? 'non-streaming' : `streaming (${CHUNKS} content events)`}, concurrency ${m.concurrency}: ` +
      `${what}, ${m.rounds.length} rounds × ${m.rounds[0]?.direct.samples.length ?? 0} per target; ` +
      `${nQuiet} quiet rounds; pooled from ${m.useQuiet ? 'the quiet rounds' : 'ALL rounds (fewer than half quiet: noisy)'} (${n} per target)`,
  )
  const rows = TARGETS.map((name) => {
    const s = m.pooled[name]
    const ms = okMs(s)
    const rs = m.rounds.map((r) => r[name])
    const reqPerS = median(rs.map((b) => (b.samples.length / b.wallMs) * 1000))
    return [
      LABEL[name],
      String(ms.length),
      fmt(quantile(ms, 0.5), 3),
      fmt(quantile(ms, 0.9), 3),
      fmt(quantile(ms, 0.99), 3),
      fmt(Math.max(...ms), 2),
      ...(m.kind === 'stream'
        ? [
            fmt(
              quantile(
                s.map((x) => x.totalMs),
                0.5,
              ),
              3,
            ),
          ]
        : []),
      fmt(reqPerS, 0),
      name === 'direct' ? '–' : fmt(median(rs.map((b) => b.cpuUsPerReq)), 0),
      String(rs.reduce((k, b) => k + b.upstreamConnections, 0)),
      String(s.filter((x) => !x.ok).length),
      fmt(median(rs.map((b) => b.foreign))),
    ]
  })
  table(
    [
      'target',
      'n',
      'p50 ms',
      'p90 ms',
      'p99 ms',
      'max ms',
      ...(m.kind === 'stream' ? ['end p50 ms'] : []),
      'req/s',
      'gw CPU µs/req',
      'upstream conns',
      'failed',
      'others (cores)',
    ],
    rows,
  )
  for (const name of PROXIES) {
    const a = added(m, name)
    const perRound = m.rounds.map(
      (r, i) =>
        `${fmt(quantile(okMs(r[name].samples), 0.5) - quantile(okMs(r.direct.samples), 0.5))}${m.quiet[i] ? '' : '*'}`,
    )
    console.log(
      `  ${LABEL[name]}: added p50 ${fmt(a.p50, 3)} ms, p99 ${fmt(a.p99, 3)} ms; ratio p50 ${fmt(a.ratioP50, 2)}, ` +
        `p99 ${fmt(a.ratioP99, 2)}; per-round added p50: ${perRound.join(' ')}`,
    )
  }
  const failures = TARGETS.flatMap((name) =>
    m.rounds.flatMap((r) => r[name].samples.filter((s) => !s.ok).map((s) => `${name}: ${s.problem}`)),
  )
  if (failures.length > 0) console.log(`  failures (first 5): ${failures.slice(0, 5).join(' | ')}`)
}

function figures(m: ModeResult): void {
  const c = `c${m.concurrency}`
  const prefix = m.kind === 'plain' ? 'providers' : 'providers.stream'
  const metric = m.kind === 'plain' ? 'added' : 'ttft_added'
  for (const name of ['on', 'off'] as const) {
    const a = added(m, name)
    const p = name === 'on' ? prefix : `${prefix}.billing_off`
    figure(`${p}.${metric}_p50_ms_${c}`, a.p50, 3, { op: '≤', value: GOAL_P50_MS })
    figure(`${p}.${metric}_p99_ms_${c}`, a.p99, 3, { op: '≤', value: GOAL_P99_MS })
    figure(`${p}.ratio_p50_${c}`, a.ratioP50, 2)
    figure(`${p}.ratio_p99_${c}`, a.ratioP99, 2)
  }
  // The floor: what the least a Node proxy does adds on this machine (no goal: a reference).
  const floor = added(m, 'bare')
  figure(`${prefix}.bare_node_proxy.${metric}_p50_ms_${c}`, floor.p50, 3)
  figure(`${prefix}.bare_node_proxy.${metric}_p99_ms_${c}`, floor.p99, 3)
}

// ---------------------------------------------------------------------------------------------

/** Asks a child for its {type: 'stats'} message over IPC. */
async function stats<T extends { type: 'stats' }>(child: Child): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${child.name} stats: no answer`)), 10_000)
    const onMessage = (msg: T): void => {
      if (msg?.type !== 'stats') return
      clearTimeout(timer)
      child.proc.off('message', onMessage)
      resolve(msg)
    }
    child.proc.on('message', onMessage)
    child.proc.send({ type: 'stats' })
  })
}

async function startGatewayChild(dir: string, upstream: string, billing: 'on' | 'off'): Promise<Target> {
  // BENCH_PROV_CPU_PROF=<dir>: each gateway writes V8 CPU profiles into <dir>/gateway-on|off when it
  // stops, one per thread (the main thread's is the large one; tsx's loader thread writes its own).
  const prof = process.env.BENCH_PROV_CPU_PROF
    ? ['--cpu-prof', '--cpu-prof-dir', join(process.env.BENCH_PROV_CPU_PROF, `gateway-${billing}`)]
    : []
  const child = spawnNode(
    `gateway-${billing}`,
    [...prof, 'bin/run-ts.js', 'bench/providers-gateway-child.ts', join(dir, `gw-${billing}`), upstream, billing],
    { ipc: true },
  )
  const m = await child.waitFor(/^ready (.*)$/m, 60_000)
  const ready = JSON.parse(m[1] as string) as { url: string; apiKey: string }
  return makeTarget(billing, ready.url, ready.apiKey, child)
}

export async function providersBench(): Promise<void> {
  console.log(`== providers: gateway in front of an upstream vs the upstream directly (${CORES} cores) ==`)
  await withScope('providers', async (dir) => {
    const upstream = spawnNode(
      'upstream',
      ['bin/run-ts.js', 'bench/providers-upstream-child.ts', UPSTREAM_MODEL, String(CHUNKS)],
      { ipc: true },
    )
    const port = (await upstream.waitFor(/listening (\d+)/, 30_000))[1] as string
    const upstreamBase = `http://${HOST}:${port}/v1`
    const [off, on] = await Promise.all([
      startGatewayChild(dir, upstreamBase, 'off'),
      startGatewayChild(dir, upstreamBase, 'on'),
    ])
    const bareChild = spawnNode(
      'bare-proxy',
      ['bin/run-ts.js', 'bench/providers-bare-proxy-child.ts', `http://${HOST}:${port}`],
      {
        ipc: true,
      },
    )
    const barePort = (await bareChild.waitFor(/listening (\d+)/, 30_000))[1] as string
    const targets: Record<TargetName, Target> = {
      direct: makeTarget('direct', `http://${HOST}:${port}`, UPSTREAM_KEY),
      bare: makeTarget('bare', `http://${HOST}:${barePort}`, UPSTREAM_KEY, bareChild),
      off,
      on,
    }
    const upstreamStats = (): Promise<UpstreamCounters> => stats<UpstreamCounters>(upstream)
    const pids = [upstream.pid, bareChild.pid, off.child?.pid ?? 0, on.child?.pid ?? 0]
    // The gateways really route to the provider (and the upstream really checks the mapped model).
    for (const name of ['off', 'on'] as const) {
      for (const once of [plainOnce, streamOnce]) {
        const s = await once(targets[name])
        if (!s.ok || s.provider !== PROVIDER) {
          throw new Error(`${name}: ${s.problem ?? `answered by '${s.provider}', not ${PROVIDER}`}`)
        }
      }
    }
    const spent0 = BigInt((await stats<ProvidersGatewayMessage>(on.child as Child)).spent)
    console.log(
      `upstream answers at once (stream: role + ${CHUNKS} content + finish [+ usage] + [DONE], a setImmediate between writes); ` +
        `load avg ${loadavg()}`,
    )
    const modes: ModeResult[] = []
    let onRequests = 0
    for (const [kind, concurrency, n] of [
      ['plain', 1, N1],
      ['plain', 32, N32],
      ['stream', 1, N1],
      ['stream', 32, N32],
    ] as const) {
      if (MODES != null && !MODES.includes(`${kind}${concurrency}`)) continue
      const m = await runMode(targets, kind, concurrency, n, pids, upstreamStats)
      onRequests += WARMUP + ROUNDS * (n + concurrency)
      report(m)
      modes.push(m)
    }
    const after = await stats<ProvidersGatewayMessage>(on.child as Child)
    const charged = BigInt(after.spent) - spent0
    console.log(
      `\nbilling on: ${onRequests} calls charged ${charged} units in all (≥ 1 each expected), ${after.held} held at the end; ` +
        `load avg ${loadavg()}`,
    )
    if (charged < BigInt(onRequests) || after.held !== '0') console.log('  BILLING CHECK FAILED')
    console.log('')
    for (const m of modes) figures(m)
    const streams = modes.filter((m) => m.kind === 'stream')
    const dropped = streams.reduce(
      (n, m) => n + TARGETS.reduce((k, name) => k + m.rounds.reduce((j, r) => j + sumDropped(r[name].samples), 0), 0),
      0,
    )
    const failed = modes.reduce(
      (n, m) =>
        n +
        TARGETS.reduce(
          (k, name) => k + m.rounds.reduce((j, r) => j + r[name].samples.filter((s) => !s.ok).length, 0),
          0,
        ),
      0,
    )
    const streamed = streams.reduce(
      (n, m) => n + m.rounds.length * TARGETS.length * (m.rounds[0]?.direct.samples.length ?? 0),
      0,
    )
    console.log(
      `providers.stream.dropped_frames = ${dropped} (of ${streamed * CHUNKS} content events in ${streamed} streams; goal 0)${dropped === 0 ? ' — met' : ' — NOT met'}`,
    )
    console.log(`providers.failed_requests = ${failed}`)
  })
}

const sumDropped = (samples: Sample[]): number => samples.reduce((n, s) => n + s.dropped, 0)
