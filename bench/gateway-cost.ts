// gateway: what our HTTP layer costs on a trivial route. GET /health on the real gateway
// (bench/gateway-child.ts: startGateway, i.e. createApp with all its middleware on
// @hono/node-server) against a bare hono app on @hono/node-server answering the same JSON
// (bench/bare-hono-child.ts), each in a process of its own, loaded by autocannon from this
// process in interleaved rounds (ours, bare, bare, ours, …). Two figures: requests/s (what a
// client sees; on 2 cores autocannon shares the machine with the server), and the server's CPU
// time per request read from /proc (independent of how fast autocannon can go).
import autocannon from 'autocannon'
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
  spawnNode,
  startGatewayProc,
  table,
  waitQuiet,
  withScope,
} from './lib.ts'

interface Round {
  rps: number
  cpuUsPerReq: number
  p50LatencyMs: number
  errors: number
  foreign: number
}

interface Server {
  child: Child
  url: string
}

async function load(server: Server, seconds: number, connections: number, pids: number[]): Promise<Round> {
  const cpu0 = cpuMs(server.child.pid)
  const others = foreignLoad(pids)
  const r = await autocannon({ url: server.url, connections, duration: seconds, pipelining: 1 })
  const foreign = others()
  const cpu1 = cpuMs(server.child.pid)
  const requests = r.requests.total
  return {
    rps: requests / r.duration,
    cpuUsPerReq: ((cpu1 - cpu0) * 1000) / Math.max(1, requests),
    p50LatencyMs: r.latency.p50,
    errors: r.errors + r.non2xx,
    foreign,
  }
}

async function checkHealth(url: string, what: string): Promise<void> {
  const res = await fetch(url)
  const body = (await res.json()) as { status?: string }
  if (res.status !== 200 || body.status !== 'ok') throw new Error(`${what}: GET /health answered ${res.status}`)
}

async function startBare(): Promise<Server> {
  const child = spawnNode('bare', ['bin/run-ts.js', 'bench/bare-hono-child.ts'], { ipc: true })
  const m = await child.waitFor(/listening (\d+)/, 30_000)
  const url = `http://${HOST}:${m[1]}/health`
  await checkHealth(url, 'bare hono')
  return { child, url }
}

async function startOurs(dir: string): Promise<Server> {
  const gw = await startGatewayProc(dir)
  const url = `${gw.url}/health`
  await checkHealth(url, 'gateway')
  return { child: gw.gateway, url }
}

export async function gatewayBench(
  rounds = Number(process.env.BENCH_GW_ROUNDS ?? 6),
  seconds = Number(process.env.BENCH_GW_SECONDS ?? 3),
  connections = 16,
): Promise<void> {
  console.log(`== gateway cost (${CORES} cores) ==`)
  await withScope('gateway', async (dir) => {
    const [ours, bare] = await Promise.all([startOurs(dir), startBare()])
    const pids = [ours.child.pid, bare.child.pid]
    // Warm-up: JIT both servers (and autocannon) before measuring.
    await load(ours, 2, connections, pids)
    await load(bare, 2, connections, pids)
    const o: Round[] = []
    const b: Round[] = []
    for (let i = 0; i < rounds; i++) {
      const pair = i % 2 === 0 ? (['ours', 'bare'] as const) : (['bare', 'ours'] as const)
      for (const kind of pair) {
        await waitQuiet(pids, 5_000)
        if (kind === 'ours') o.push(await load(ours, seconds, connections, pids))
        else b.push(await load(bare, seconds, connections, pids))
      }
    }
    const rpsRatios = o.map((x, i) => x.rps / (b[i]?.rps ?? Number.NaN))
    const cpuRatios = o.map((x, i) => x.cpuUsPerReq / (b[i]?.cpuUsPerReq ?? Number.NaN))
    const noisy = o.map((x, i) => x.foreign >= QUIET_CORES || (b[i]?.foreign ?? 1) >= QUIET_CORES)
    const row = (name: string, rs: Round[]): string[] => [
      name,
      fmt(median(rs.map((r) => r.rps)), 0),
      fmt(Math.min(...rs.map((r) => r.rps)), 0),
      fmt(Math.max(...rs.map((r) => r.rps)), 0),
      fmt(median(rs.map((r) => r.cpuUsPerReq)), 1),
      fmt(median(rs.map((r) => r.p50LatencyMs)), 1),
      String(rs.reduce((n, r) => n + r.errors, 0)),
      fmt(median(rs.map((r) => r.foreign))),
    ]
    console.log(`\nGET /health, autocannon ${connections} connections, ${rounds} × ${seconds} s rounds each (median)`)
    table(
      ['server', 'req/s', 'min', 'max', 'server CPU µs/req', 'p50 latency ms', 'errors', 'others (cores)'],
      [row('ours (startGateway)', o), row('bare hono', b)],
    )
    const mark = (xs: number[]): string => xs.map((x, i) => `${fmt(x, 3)}${noisy[i] ? '*' : ''}`).join(' ')
    console.log(
      `  paired req/s ratios ours/bare: ${mark(rpsRatios)}\n  paired CPU/req ratios ours/bare: ${mark(cpuRatios)}\n` +
        `  (* = others used ≥ ${QUIET_CORES} cores during the pair); load avg ${loadavg()}`,
    )
    figure('gateway.rps_ratio', median(rpsRatios), 3)
    figure('gateway.cpu_per_req_ratio', median(cpuRatios), 3)
  })
}
