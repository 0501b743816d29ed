// mesh: one stream through the whole system (client → gateway HTTP/SSE → libp2p → node → engine)
// against the same engine called in-process (LlamaEngine + Scheduler.submit with onDelta).
// The gateway, the node and the direct engine each run in a process of their own, with the same
// threads and slots; samples are taken in interleaved pairs (mesh/direct, then direct/mesh, …) so
// drift on this shared machine hits both sides alike.
//  (a) TTFT added by the mesh, on the tiny preset (the model's own time is small, the overhead shows)
//  (b) tokens/s of one stream, mesh/direct, on the 1b preset (memory-bound decode, ~16 tok/s here)
import {
  benchModel,
  type ChatParams,
  CORES,
  type DirectEngine,
  fmt,
  figure,
  loadavg,
  type MeshProcs,
  median,
  quantile,
  type StreamTiming,
  startDirect,
  startMesh,
  streamChat,
  table,
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
}

async function meshOnce(mesh: MeshProcs, p: ChatParams): Promise<Sample> {
  const r: StreamTiming = await streamChat(mesh.url, p)
  return { ttftMs: r.ttftMs, doneMs: r.doneMs, tokens: r.completionTokens, finish: r.finishReason, text: r.text }
}

async function directOnce(direct: DirectEngine, p: ChatParams): Promise<Sample> {
  const [r] = await direct.run(p)
  if (r == null) throw new Error('direct: no result')
  return { ttftMs: r.ttftMs, doneMs: r.doneMs, tokens: r.completionTokens, finish: r.finishReason, text: r.text }
}

/** `rounds` interleaved pairs after `warmup` unmeasured runs of each. */
async function pairs(
  mesh: MeshProcs,
  direct: DirectEngine,
  p: ChatParams,
  rounds: number,
  warmup: number,
): Promise<{ mesh: Sample[]; direct: Sample[] }> {
  for (let i = 0; i < warmup; i++) {
    await meshOnce(mesh, p)
    await directOnce(direct, p)
  }
  const out = { mesh: [] as Sample[], direct: [] as Sample[] }
  for (let i = 0; i < rounds; i++) {
    if (i % 2 === 0) {
      out.mesh.push(await meshOnce(mesh, p))
      out.direct.push(await directOnce(direct, p))
    } else {
      out.direct.push(await directOnce(direct, p))
      out.mesh.push(await meshOnce(mesh, p))
    }
  }
  const m = out.mesh[0]
  const d = out.direct[0]
  if (m && d && (m.text !== d.text || m.tokens !== d.tokens)) {
    console.log(`  warning: mesh and direct generated different outputs (${m.tokens} vs ${d.tokens} tokens)`)
  }
  return out
}

/** Decode rate after the first token: (tokens − 1) / (done − first token). */
const decodeTps = (s: Sample): number => (s.tokens - 1) / ((s.doneMs - s.ttftMs) / 1000)

export async function ttftBench(rounds = Number(process.env.BENCH_TTFT_ROUNDS ?? 40)): Promise<number> {
  const model = await benchModel('tiny')
  // The tiny preset decodes fastest on one thread (node/llama-engine.ts defaultThreads): both sides use 1.
  const threads = 1
  const slots = 4
  return withScope('mesh-ttft', async (dir) => {
    const [mesh, direct] = await Promise.all([
      startMesh(dir, { model, modelId: 'bench-tiny', threads, slots }),
      startDirect({ model, threads, slots }),
    ])
    const p: ChatParams = { model: 'bench-tiny', prompt: PROMPT, maxTokens: 8, seed: SEED }
    const r = await pairs(mesh, direct, p, rounds, 5)
    const mt = r.mesh.map((s) => s.ttftMs)
    const dt = r.direct.map((s) => s.ttftMs)
    const diffs = mt.map((m, i) => m - (dt[i] ?? Number.NaN))
    console.log(`\nmesh (a) TTFT, tiny preset, threads ${threads}, max_tokens ${p.maxTokens}, ${rounds} pairs`)
    table(
      ['path', 'p10 ms', 'p50 ms', 'p90 ms', 'min ms'],
      [
        ['gateway+mesh+node', fmt(quantile(mt, 0.1)), fmt(median(mt)), fmt(quantile(mt, 0.9)), fmt(Math.min(...mt))],
        ['direct (in-process)', fmt(quantile(dt, 0.1)), fmt(median(dt)), fmt(quantile(dt, 0.9)), fmt(Math.min(...dt))],
        ['paired difference', fmt(quantile(diffs, 0.1)), fmt(median(diffs)), fmt(quantile(diffs, 0.9)), ''],
      ],
    )
    console.log(`  tokens per answer: mesh ${r.mesh[0]?.tokens}, direct ${r.direct[0]?.tokens}; load avg ${loadavg()}`)
    const added = median(mt) - median(dt)
    figure('mesh.ttft_added_p50_ms', added, 2, { op: '≤', value: 2 })
    return added
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
    const p: ChatParams = { model: 'bench-1b', prompt: PROMPT, maxTokens: 64, seed: SEED }
    const r = await pairs(mesh, direct, p, rounds, 1)
    const mt = r.mesh.map(decodeTps)
    const dt = r.direct.map(decodeTps)
    const ratios = mt.map((m, i) => m / (dt[i] ?? Number.NaN))
    console.log(`\nmesh (b) tokens/s of one stream, 1b preset, threads ${threads}, max_tokens ${p.maxTokens}, ${rounds} pairs`)
    table(
      ['path', 'min tok/s', 'p50 tok/s', 'max tok/s', 'p50 TTFT ms', 'tokens'],
      [
        [
          'gateway+mesh+node',
          fmt(Math.min(...mt)),
          fmt(median(mt)),
          fmt(Math.max(...mt)),
          fmt(median(r.mesh.map((s) => s.ttftMs)), 1),
          `${r.mesh[0]?.tokens} (${r.mesh[0]?.finish})`,
        ],
        [
          'direct (in-process)',
          fmt(Math.min(...dt)),
          fmt(median(dt)),
          fmt(Math.max(...dt)),
          fmt(median(r.direct.map((s) => s.ttftMs)), 1),
          `${r.direct[0]?.tokens} (${r.direct[0]?.finish})`,
        ],
      ],
    )
    console.log(`  paired ratios mesh/direct: ${ratios.map((x) => fmt(x, 3)).join(' ')}; load avg ${loadavg()}`)
    const ratio = median(ratios)
    figure('mesh.tps_ratio', ratio, 3, { op: '≥', value: 0.97 })
    return ratio
  })
}

export async function meshBench(): Promise<void> {
  console.log(`== mesh vs direct (${CORES} cores) ==`)
  await ttftBench()
  await tpsBench()
}
