// mesh: one stream through the whole system (client → gateway HTTP/SSE → libp2p → node → engine)
// against the same engine called in-process (LlamaEngine + Scheduler.submit with onDelta).
// The gateway, the node and the direct engine each run in a process of their own, with the same
// threads and slots; samples are taken in interleaved pairs (mesh/direct, then direct/mesh, …) so
// drift on this shared machine hits both sides alike.
//  (a) TTFT added by the mesh, on the tiny preset (the model's own time is small, the overhead shows)
//  (b) tokens/s of one stream, mesh/direct, on the 1b preset (memory-bound decode, ~10–16 tok/s here)
import {
  benchModel,
  type ChatParams,
  type Child,
  CORES,
  cpuMs,
  type DirectEngine,
  figure,
  fmt,
  foreignLoad,
  loadavg,
  type MeshProcs,
  median,
  QUIET_CORES,
  quantile,
  startDirect,
  startMesh,
  startMeshFloor,
  streamChat,
  table,
  waitQuiet,
  withScope,
} from './lib.ts'

const PROMPT = 'Write a haiku about a peer-to-peer inference mesh.'
const SEED = 42

interface Sample {
  ttftMs: number
  doneMs: number
  tokens: number
  finish: string
  text: string
  /** Cores other processes on the machine kept busy during the sample. */
  foreign: number
}

type Run = (p: ChatParams) => Promise<Omit<Sample, 'foreign'>>

function meshRun(mesh: MeshProcs): Run {
  return async (p) => {
    const r = await streamChat(mesh, p)
    return { ttftMs: r.ttftMs, doneMs: r.doneMs, tokens: r.completionTokens, finish: r.finishReason, text: r.text }
  }
}

function directRun(direct: DirectEngine): Run {
  return async (p) => {
    const [r] = await direct.run(p)
    if (r == null) throw new Error('direct: no result')
    return { ttftMs: r.ttftMs, doneMs: r.doneMs, tokens: r.completionTokens, finish: r.finishReason, text: r.text }
  }
}

/** `rounds` interleaved pairs: mesh then direct, then direct then mesh, and so on. */
async function pairs(
  mesh: Run,
  direct: Run,
  p: ChatParams,
  rounds: number,
  pids: number[],
  quietFirst: boolean,
): Promise<{ mesh: Sample[]; direct: Sample[] }> {
  const out = { mesh: [] as Sample[], direct: [] as Sample[] }
  const one = async (run: Run, into: Sample[]): Promise<void> => {
    if (quietFirst) await waitQuiet(pids)
    const others = foreignLoad(pids)
    const s = await run(p)
    into.push({ ...s, foreign: others() })
  }
  for (let i = 0; i < rounds; i++) {
    if (i % 2 === 0) {
      await one(mesh, out.mesh)
      await one(direct, out.direct)
    } else {
      await one(direct, out.direct)
      await one(mesh, out.mesh)
    }
  }
  const m = out.mesh[0]
  const d = out.direct[0]
  if (m && d && (m.text !== d.text || m.tokens !== d.tokens)) {
    console.log(`  warning: mesh and direct generated different outputs (${m.tokens} vs ${d.tokens} tokens)`)
  }
  return out
}

/** CPU time each process spent during `body`, per request (ms, all its threads), from /proc. */
async function cpuPerRequest<T>(
  procs: Record<string, Child>,
  requests: number,
  body: () => Promise<T>,
): Promise<{ result: T; cpu: Record<string, number> }> {
  const before = Object.fromEntries(Object.entries(procs).map(([k, c]) => [k, cpuMs(c.pid)]))
  const result = await body()
  const cpu = Object.fromEntries(
    Object.entries(procs).map(([k, c]) => [k, (cpuMs(c.pid) - (before[k] ?? 0)) / requests]),
  )
  return { result, cpu }
}

/** Decode rate after the first token: (tokens − 1) / (done − first token). */
const decodeTps = (s: Sample): number => (s.tokens - 1) / ((s.doneMs - s.ttftMs) / 1000)

export async function ttftBench(rounds = Number(process.env.BENCH_TTFT_ROUNDS ?? 60)): Promise<number> {
  const model = await benchModel('tiny')
  // The tiny preset decodes fastest on one thread (node/llama-engine.ts defaultThreads): both sides use 1.
  const threads = 1
  const slots = 4
  return withScope('mesh-ttft', async (dir) => {
    const node = { model, modelId: 'bench-tiny', threads, slots }
    const [mesh, floor, direct] = await Promise.all([
      startMesh(dir, node),
      startMeshFloor(dir, node),
      startDirect(node),
    ])
    const p: ChatParams = { model: 'bench-tiny', prompt: PROMPT, maxTokens: 8, seed: SEED }
    const pids = [mesh.gateway.pid, mesh.node.pid, floor.gateway.pid, floor.node.pid, direct.child.pid]
    const targets = { ours: meshRun(mesh), floor: meshRun(floor) }
    const d = directRun(direct)
    for (let i = 0; i < 5; i++) for (const run of [targets.ours, targets.floor, d]) await run(p)
    // Each path in blocks of pairs against the direct engine, paced as one client would (mesh then
    // direct, direct then mesh, …); the blocks of the two paths alternate, so drift hits both alike.
    const block = 20
    const samples = {
      ours: { mesh: [] as Sample[], direct: [] as Sample[] },
      floor: { mesh: [] as Sample[], direct: [] as Sample[] },
    }
    const cpu = { gateway: 0, node: 0, direct: 0 }
    for (let b = 0; b < 2 * Math.ceil(rounds / block); b++) {
      const which = b % 2 === 0 ? 'ours' : 'floor'
      const n = Math.min(block, rounds - samples[which].mesh.length)
      if (n <= 0) continue
      const procs = which === 'ours' ? { gateway: mesh.gateway, node: mesh.node, direct: direct.child } : {}
      const { result, cpu: used } = await cpuPerRequest(procs, 1, () => pairs(targets[which], d, p, n, pids, false))
      samples[which].mesh.push(...result.mesh)
      samples[which].direct.push(...result.direct)
      for (const k of Object.keys(used) as Array<keyof typeof cpu>) cpu[k] += used[k] ?? 0
    }
    const ttft = (xs: Sample[]): number[] => xs.map((s) => s.ttftMs)
    const row = (name: string, xs: number[]): string[] => [
      name,
      fmt(quantile(xs, 0.1)),
      fmt(median(xs)),
      fmt(quantile(xs, 0.9)),
      fmt(Math.min(...xs)),
    ]
    const added = (which: 'ours' | 'floor'): number =>
      median(ttft(samples[which].mesh)) - median(ttft(samples[which].direct))
    const paired = (which: 'ours' | 'floor'): number[] =>
      ttft(samples[which].mesh).map((x, i) => x - (samples[which].direct[i]?.ttftMs ?? Number.NaN))
    console.log(`\nmesh (a) TTFT, tiny preset, threads ${threads}, max_tokens ${p.maxTokens}, ${rounds} pairs per path`)
    table(
      ['path', 'p10 ms', 'p50 ms', 'p90 ms', 'min ms'],
      [
        row('gateway+mesh+node (ours)', ttft(samples.ours.mesh)),
        row('  direct, in its blocks', ttft(samples.ours.direct)),
        row('  paired difference', paired('ours')),
        row('floor: bare HTTP+libp2p', ttft(samples.floor.mesh)),
        row('  direct, in its blocks', ttft(samples.floor.direct)),
        row('  paired difference', paired('floor')),
      ],
    )
    const count = samples.ours.mesh.length
    console.log(
      `  CPU per request of ours (ms, all threads, whole answer of ${samples.ours.mesh[0]?.tokens} tokens): gateway ${fmt(cpu.gateway / count)}, ` +
        `node ${fmt(cpu.node / count)}, direct ${fmt(cpu.direct / count)}; load avg ${loadavg()}`,
    )
    console.log(
      '  floor = node:http + the same libp2p peer (noise, yamux, a spare stream) in front of the same engine, no logic of ours (bench/mesh-floor-*-child.ts)',
    )
    const ours = added('ours')
    const base = added('floor')
    figure('mesh.floor_ttft_added_p50_ms', base, 2)
    figure('mesh.ttft_above_floor_p50_ms', ours - base, 2)
    figure('mesh.ttft_added_p50_ms', ours, 2, { op: '≤', value: 2 })
    return ours
  })
}

export async function tpsBench(rounds = Number(process.env.BENCH_TPS_ROUNDS ?? 6)): Promise<number> {
  const model = await benchModel('1b')
  const threads = CORES
  const slots = 4
  return withScope('mesh-tps', async (dir) => {
    const [mesh, direct] = await Promise.all([
      startMesh(dir, { model, modelId: 'bench-1b', threads, slots }),
      startDirect({ model, threads, slots }),
    ])
    const p: ChatParams = { model: 'bench-1b', prompt: PROMPT, maxTokens: 40, seed: SEED }
    const [m, d] = [meshRun(mesh), directRun(direct)]
    await m({ ...p, maxTokens: 8 })
    await d({ ...p, maxTokens: 8 })
    const r = await pairs(m, d, p, rounds, [mesh.gateway.pid, mesh.node.pid, direct.child.pid], true)
    const mt = r.mesh.map(decodeTps)
    const dt = r.direct.map(decodeTps)
    const ratios = mt.map((x, i) => x / (dt[i] ?? Number.NaN))
    const quiet = r.mesh
      .map((s, i) => s.foreign < QUIET_CORES && (r.direct[i]?.foreign ?? 1) < QUIET_CORES)
      .map((q, i) => (q ? i : -1))
      .filter((i) => i >= 0)
    console.log(
      `\nmesh (b) decode tokens/s of one stream, 1b preset, threads ${threads}, max_tokens ${p.maxTokens}, ${rounds} pairs`,
    )
    const row = (name: string, xs: number[], ss: Sample[]): string[] => [
      name,
      fmt(Math.min(...xs)),
      fmt(median(xs)),
      fmt(Math.max(...xs)),
      fmt(median(ss.map((s) => s.ttftMs)), 1),
      `${ss[0]?.tokens} (${ss[0]?.finish})`,
      fmt(median(ss.map((s) => s.foreign))),
    ]
    table(
      ['path', 'min tok/s', 'p50 tok/s', 'max tok/s', 'p50 TTFT ms', 'tokens', 'others (cores)'],
      [row('gateway+mesh+node', mt, r.mesh), row('direct (in-process)', dt, r.direct)],
    )
    console.log(
      `  paired ratios mesh/direct: ${ratios.map((x, i) => `${fmt(x, 3)}${quiet.includes(i) ? '' : '*'}`).join(' ')}` +
        `  (* = others used ≥ ${QUIET_CORES} cores during the pair); load avg ${loadavg()}`,
    )
    const quietRatios = quiet.map((i) => ratios[i] as number)
    const useQuiet = quietRatios.length >= 3
    const ratio = median(useQuiet ? quietRatios : ratios)
    console.log(
      `  all pairs: median ${fmt(median(ratios), 3)}, best/best ${fmt(Math.max(...mt) / Math.max(...dt), 3)}; ` +
        (useQuiet
          ? `figure from the ${quietRatios.length} quiet pairs`
          : `only ${quietRatios.length} quiet pairs: figure from all pairs, treat it as noisy`),
    )
    figure('mesh.tps_ratio', ratio, 3, { op: '≥', value: 0.97 })
    return ratio
  })
}

export async function meshBench(): Promise<void> {
  console.log(`== mesh vs direct (${CORES} cores) ==`)
  await ttftBench()
  await tpsBench()
}
