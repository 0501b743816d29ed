// batching: aggregate tokens/s through the gateway with 1, 4 and 8 concurrent streaming requests
// on the 1b synthetic model (node with 8 slots, threads = cores). The Scheduler steps every active
// sequence in the same tick so node-llama-cpp decodes them as one batch: decoding is memory-bound,
// so a batch of 4 should cost little more than one token. The same engine in a process of its own
// (no gateway, no libp2p) is measured in the same interleaved rounds as a reference.
import {
  benchModel,
  type ChatParams,
  CORES,
  type DirectEngine,
  figure,
  fmt,
  foreignLoad,
  loadavg,
  type MeshProcs,
  median,
  QUIET_CORES,
  startDirect,
  startMesh,
  streamChat,
  table,
  waitQuiet,
  withScope,
} from './lib.ts'

const LEVELS = [1, 4, 8] as const
const PROMPT = 'Write a haiku about a peer-to-peer inference mesh.'

interface Sample {
  /** All completion tokens / wall time from the first request to the last answer. */
  tps: number
  /** Cores other processes on the machine kept busy meanwhile. */
  foreign: number
}

async function viaGateway(mesh: MeshProcs, p: ChatParams, c: number): Promise<number> {
  const t0 = performance.now()
  const runs = await Promise.all(Array.from({ length: c }, () => streamChat(mesh, p)))
  const wall = performance.now() - t0
  return runs.reduce((n, r) => n + r.completionTokens, 0) / (wall / 1000)
}

async function viaDirect(direct: DirectEngine, p: ChatParams, c: number): Promise<number> {
  const runs = await direct.run(p, c)
  const wall = Math.max(...runs.map((r) => r.sinceBatchStartMs))
  return runs.reduce((n, r) => n + r.completionTokens, 0) / (wall / 1000)
}

/** Median over the quiet samples when there are at least two, else over all of them. */
function robust(samples: Sample[]): { value: number; quiet: number } {
  const quiet = samples.filter((s) => s.foreign < QUIET_CORES)
  const use = quiet.length >= 2 ? quiet : samples
  return { value: median(use.map((s) => s.tps)), quiet: quiet.length }
}

export async function batchingBench(rounds = Number(process.env.BENCH_BATCH_ROUNDS ?? 2)): Promise<void> {
  console.log(`== batching (${CORES} cores) ==`)
  const model = await benchModel('1b')
  const threads = CORES
  const slots = 8
  await withScope('batching', async (dir) => {
    const [mesh, direct] = await Promise.all([
      startMesh(dir, { model, modelId: 'bench-1b', threads, slots }),
      startDirect({ model, threads, slots }),
    ])
    const pids = [mesh.gateway.pid, mesh.node.pid, direct.child.pid]
    const p: ChatParams = { model: 'bench-1b', prompt: PROMPT, maxTokens: 24, seed: 7 }
    // Warm-up: one short request each, and one full batch through the gateway.
    await streamChat(mesh, { ...p, maxTokens: 4 })
    await direct.run({ ...p, maxTokens: 4 })
    await viaGateway(mesh, { ...p, maxTokens: 4 }, 8)

    const gw = new Map<number, Sample[]>(LEVELS.map((c) => [c, []]))
    const dr = new Map<number, Sample[]>(LEVELS.map((c) => [c, []]))
    const sample = async (into: Sample[] | undefined, run: () => Promise<number>): Promise<void> => {
      await waitQuiet(pids)
      const others = foreignLoad(pids)
      const tps = await run()
      into?.push({ tps, foreign: others() })
    }
    for (let r = 0; r < rounds; r++) {
      // Rotate the order of the levels, and alternate which path goes first, to spread drift.
      const order = LEVELS.map((_, i) => LEVELS[(i + r) % LEVELS.length] as number)
      for (const c of order) {
        const g = (): Promise<void> => sample(gw.get(c), () => viaGateway(mesh, p, c))
        const d = (): Promise<void> => sample(dr.get(c), () => viaDirect(direct, p, c))
        if (r % 2 === 0) {
          await g()
          await d()
        } else {
          await d()
          await g()
        }
      }
    }
    const g = (c: number): number => robust(gw.get(c) ?? []).value
    const d = (c: number): number => robust(dr.get(c) ?? []).value
    const span = (m: Map<number, Sample[]>, c: number): string => {
      const xs = (m.get(c) ?? []).map((s) => s.tps)
      return `${fmt(Math.min(...xs), 1)}–${fmt(Math.max(...xs), 1)}`
    }
    const quiet = (m: Map<number, Sample[]>, c: number): string =>
      `${robust(m.get(c) ?? []).quiet}/${(m.get(c) ?? []).length}`
    console.log(
      `\naggregate tok/s (all completion tokens / wall time), 1b preset, threads ${threads}, slots ${slots}, ` +
        `max_tokens ${p.maxTokens}, ${rounds} rounds; p50 over the quiet samples when ≥ 2 are quiet`,
    )
    table(
      ['concurrent', 'gateway p50', 'min–max', 'quiet', 'x one', 'direct p50', 'min–max', 'quiet', 'x one'],
      LEVELS.map((c) => [
        String(c),
        fmt(g(c)),
        span(gw, c),
        quiet(gw, c),
        fmt(g(c) / g(1)),
        fmt(d(c)),
        span(dr, c),
        quiet(dr, c),
        fmt(d(c) / d(1)),
      ]),
    )
    const all = (m: Map<number, Sample[]>): string =>
      LEVELS.map(
        (c) =>
          `${c}: ${(m.get(c) ?? []).map((s) => `${fmt(s.tps, 1)}${s.foreign < QUIET_CORES ? '' : '*'}`).join('/')}`,
      ).join('  ')
    console.log(
      `  samples gateway ${all(gw)}\n  samples direct  ${all(dr)}\n` +
        `  (* = others used ≥ ${QUIET_CORES} cores meanwhile); load avg ${loadavg()}`,
    )
    for (const c of [4, 8]) {
      const xs = [...(gw.get(c) ?? []), ...(dr.get(c) ?? [])].filter((s) => s.foreign < QUIET_CORES).map((s) => s.tps)
      if (xs.length >= 2 && Math.max(...xs) > 1.5 * Math.min(...xs)) {
        console.log(
          `  note: quiet ${c}-concurrent samples differ by more than 1.5x (${fmt(Math.min(...xs), 1)} vs ` +
            `${fmt(Math.max(...xs), 1)} tok/s): batches split by sequence order, see bench/README.md`,
        )
      }
    }
    for (const c of LEVELS) figure(`batching.tps_${c}`, g(c), 2)
    figure('batching.ratio_4_1', g(4) / g(1), 2, { op: '≥', value: 2 })
    figure('batching.ratio_8_1', g(8) / g(1), 2)
  })
}
