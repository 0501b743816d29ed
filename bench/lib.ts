// Shared helpers for the benches: child processes (always killed at the end, also on error or
// Ctrl-C), the synthetic models, a gateway and a node as real CLI processes, an SSE client on
// node:http, the direct-engine child over IPC, and small statistics and table printing.
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import http from 'node:http'
import { availableParallelism, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { type SynthPresetName, synthesizeGguf } from '../src/models/synth.ts'
import type { DirectReply, DirectRequest, DirectRunResult } from './direct-child.ts'

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
export const CORES = availableParallelism()
export const HOST = '127.0.0.1'

// ---------------------------------------------------------------------------------------------
// Child processes: every one is registered, and killed when the bench ends however it ends.

const children = new Set<ChildProcess>()
/** Temp dirs of the scopes under way: removed on Ctrl-C too. */
const scopeDirs = new Set<string>()
let hooksInstalled = false

function killNow(child: ChildProcess): void {
  if (child.exitCode == null && child.signalCode == null) child.kill('SIGKILL')
}

function installHooks(): void {
  if (hooksInstalled) return
  hooksInstalled = true
  process.on('exit', () => {
    for (const c of children) killNow(c)
  })
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      for (const c of children) killNow(c)
      for (const d of scopeDirs) rmSync(d, { recursive: true, force: true })
      process.exit(130)
    })
  }
}

export interface Child {
  name: string
  proc: ChildProcess
  pid: number
  /** Everything written to stdout so far. */
  output(): string
  /** Resolves with the first match of `re` in stdout. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>
  /** SIGTERM, then SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>
}

/** Spawns `node <args>` in the repo root. stderr is kept and shown if the child dies early. */
export function spawnNode(name: string, args: string[], opts: { ipc?: boolean; env?: NodeJS.ProcessEnv } = {}): Child {
  installHooks()
  // BENCH_CPU_PROF=<dir>: every child writes a V8 CPU profile into <dir>/<name> when it exits.
  const prof = process.env.BENCH_CPU_PROF
  if (prof) args = ['--cpu-prof', '--cpu-prof-dir', join(prof, name), ...args]
  const proc = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { ...process.env, ...opts.env },
    stdio: opts.ipc ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'pipe', 'pipe'],
  })
  children.add(proc)
  let out = ''
  let err = ''
  const waiters = new Set<() => void>()
  proc.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out += d
    for (const w of waiters) w()
  })
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => {
    err = (err + d).slice(-4000)
  })
  let exited = false
  const exitPromise = new Promise<void>((res) =>
    proc.once('exit', () => {
      exited = true
      children.delete(proc)
      for (const w of waiters) w()
      res()
    }),
  )
  if (proc.pid == null) throw new Error(`${name}: spawn failed`)
  return {
    name,
    proc,
    pid: proc.pid,
    output: () => out,
    waitFor: (re, timeoutMs = 120_000) =>
      new Promise((res, rej) => {
        const timer = setTimeout(() => done(new Error(`${name}: no ${re} within ${timeoutMs} ms\n${err}`)), timeoutMs)
        const check = (): void => {
          const m = out.match(re)
          if (m) done(undefined, m)
          else if (exited) done(new Error(`${name} exited (code ${proc.exitCode})\n${err}`))
        }
        const done = (e?: Error, m?: RegExpMatchArray): void => {
          clearTimeout(timer)
          waiters.delete(check)
          if (e) rej(e)
          else res(m as RegExpMatchArray)
        }
        waiters.add(check)
        check()
      }),
    stop: async (graceMs = 3_000) => {
      if (exited) return
      proc.kill('SIGTERM')
      const t = setTimeout(() => killNow(proc), graceMs)
      await exitPromise
      clearTimeout(t)
    },
  }
}

/** Stops every child still running (SIGTERM, then SIGKILL). */
export async function stopAll(): Promise<void> {
  await Promise.all(
    [...children].map(
      (proc) =>
        new Promise<void>((res) => {
          if (proc.exitCode != null || proc.signalCode != null) return res()
          proc.once('exit', () => res())
          proc.kill('SIGTERM')
          setTimeout(() => killNow(proc), 3_000).unref()
        }),
    ),
  )
}

/** Runs `body` with a temp dir; every child is stopped and the dir removed afterwards, also on error. */
export async function withScope<T>(prefix: string, body: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), `cluster-bench-${prefix}-`))
  scopeDirs.add(dir)
  try {
    return await body(dir)
  } finally {
    await stopAll()
    await rm(dir, { recursive: true, force: true })
    scopeDirs.delete(dir)
  }
}

/** CPU time (user + system) a process has used so far, in ms, from /proc (Linux). */
export function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // utime and stime are fields 14 and 15 (1-based) of the whole line: 12 and 13 after the name.
  const ticks = Number(fields[11]) + Number(fields[12])
  return (ticks * 1000) / 100 // USER_HZ is 100 on Linux
}

/** CPU time (ms) all CPUs spent busy so far, from /proc/stat. */
function systemBusyMs(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? ''
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = line
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number)
  return ((user + nice + system + irq + softirq + steal) * 1000) / 100
}

/**
 * Starts measuring the CPU used by everything on the machine except this process and `pids`
 * (other people's tests, on this shared box). The returned function gives the average number of
 * cores those others kept busy since the start.
 */
export function foreignLoad(pids: number[]): () => number {
  const ours = (): number => [process.pid, ...pids].reduce((n, pid) => n + cpuMs(pid), 0)
  const t0 = performance.now()
  const s0 = systemBusyMs()
  const o0 = ours()
  return () => {
    const wall = performance.now() - t0
    return Math.max(0, systemBusyMs() - s0 - (ours() - o0)) / wall
  }
}

/** Samples taken while others used less than this many cores count as quiet. */
export const QUIET_CORES = 0.25

/**
 * Waits, up to `maxMs`, for a 500 ms window in which other processes use less than QUIET_CORES,
 * so long samples start on a quiet machine (both sides of a comparison wait alike). Returns the
 * time waited.
 */
export async function waitQuiet(
  pids: number[],
  maxMs = Number(process.env.BENCH_QUIET_WAIT_MS ?? 15_000),
): Promise<number> {
  const t0 = performance.now()
  while (performance.now() - t0 < maxMs) {
    const others = foreignLoad(pids)
    await sleep(500)
    if (others() < QUIET_CORES) break
  }
  return performance.now() - t0
}

// ---------------------------------------------------------------------------------------------
// Models

/** A synthetic model in the temp dir, generated once and reused (the generator is deterministic). */
export async function benchModel(preset: SynthPresetName): Promise<string> {
  const path = join(tmpdir(), 'cluster-bench-models', `${preset}.gguf`)
  if (!existsSync(path)) {
    process.stdout.write(`generating the ${preset} synthetic model into ${path}…\n`)
    await synthesizeGguf({ preset, out: path })
  }
  return path
}

// ---------------------------------------------------------------------------------------------
// A gateway (bench/gateway-child.ts) and a node (`cluster node`), each in a process of its own.

/** Where to send HTTP requests, and the API key /v1 needs. */
export interface Endpoint {
  url: string
  apiKey: string
}

export interface MeshProcs extends Endpoint {
  gateway: Child
  node: Child
}

export interface NodeProcOptions {
  model: string
  modelId: string
  threads: number
  slots: number
}

/** The gateway alone: billing off, a rate limit that never refuses (see bench/gateway-child.ts). */
export async function startGatewayProc(dir: string): Promise<Endpoint & { gateway: Child; multiaddrs: string[] }> {
  const gateway = spawnNode('gateway', ['bin/run-ts.js', 'bench/gateway-child.ts', join(dir, 'gw')], { ipc: true })
  const m = await gateway.waitFor(/^ready (.*)$/m)
  const ready = JSON.parse(m[1] as string) as { url: string; multiaddrs: string[]; apiKey: string }
  if (!ready.apiKey) throw new Error('gateway: no admin API key (the data dir was not fresh)')
  return { gateway, ...ready }
}

export async function startMesh(dir: string, node: NodeProcOptions): Promise<MeshProcs> {
  const gw = await startGatewayProc(dir)
  const bootstrap = gw.multiaddrs.find((a) => a.includes('/tcp/') && !a.includes('/ws'))
  if (bootstrap == null) throw new Error(`gateway: no TCP multiaddr in ${gw.multiaddrs.join(' ')}`)
  const nodeProc = spawnClusterNode(dir, bootstrap, node)
  await nodeProc.waitFor(/^node \S+/m)
  await waitForModel(gw, node.modelId, 30_000)
  return { url: gw.url, apiKey: gw.apiKey, gateway: gw.gateway, node: nodeProc }
}

/**
 * The floor of the mesh path (bench/mesh-floor-gateway-child.ts + bench/mesh-floor-node-child.ts):
 * node:http and the same libp2p peer in front of the same engine, with no logic of ours on either
 * side. Data under `<dir>/floor-gw` and `<dir>/floor-node`.
 */
export async function startMeshFloor(dir: string, node: NodeProcOptions): Promise<MeshProcs> {
  const gateway = spawnNode('floor-gateway', [
    'bin/run-ts.js',
    'bench/mesh-floor-gateway-child.ts',
    join(dir, 'floor-gw'),
  ])
  const m = await gateway.waitFor(/^ready (.*)$/m)
  const ready = JSON.parse(m[1] as string) as { url: string; multiaddrs: string[] }
  const bootstrap = ready.multiaddrs.find((a) => a.includes('/tcp/') && !a.includes('/ws'))
  if (bootstrap == null) throw new Error(`floor gateway: no TCP multiaddr in ${ready.multiaddrs.join(' ')}`)
  const nodeProc = spawnNode('floor-node', [
    'bin/run-ts.js',
    'bench/mesh-floor-node-child.ts',
    join(dir, 'floor-node'),
    node.model,
    node.modelId,
    String(node.threads),
    String(node.slots),
    bootstrap,
  ])
  await nodeProc.waitFor(/^ready$/m)
  return { url: ready.url, apiKey: '', gateway, node: nodeProc }
}

/** `cluster node` in its own process, CPU only, joined to `bootstrap`, data under `<dir>/node`. */
export function spawnClusterNode(
  dir: string,
  bootstrap: string,
  node: NodeProcOptions & { maxQueue?: number; payoutAddress?: string },
): Child {
  return spawnNode('node', [
    'bin/cluster.js',
    'node',
    '--data-dir',
    join(dir, 'node'),
    '--listen',
    `/ip4/${HOST}/tcp/0`,
    '--bootstrap',
    bootstrap,
    '--model',
    node.model,
    '--model-id',
    node.modelId,
    '--threads',
    String(node.threads),
    '--slots',
    String(node.slots),
    ...(node.maxQueue != null ? ['--max-queue', String(node.maxQueue)] : []),
    ...(node.payoutAddress != null ? ['--payout-address', node.payoutAddress] : []),
    '--gpu',
    'off',
  ])
}

export async function waitForModel(ep: Endpoint, model: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      const res = await fetch(`${ep.url}/v1/models`, { headers: { authorization: `Bearer ${ep.apiKey}` } })
      const body = (await res.json()) as { data?: Array<{ id: string }> }
      if (body.data?.some((m) => m.id === model)) return
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`${model} did not appear at ${ep.url} within ${timeoutMs} ms`)
    await sleep(100)
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

// ---------------------------------------------------------------------------------------------
// The SSE client: node:http with a keep-alive agent (less client overhead than fetch/undici).

export interface ChatParams {
  model: string
  prompt: string
  maxTokens: number
  seed: number
}

export interface StreamTiming {
  /** ms from request start to the first chunk with non-empty content. */
  ttftMs: number
  /** ms from request start to the chunk with finish_reason. */
  doneMs: number
  completionTokens: number
  promptTokens: number
  finishReason: string
  text: string
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 })

export function chatBody(p: ChatParams): string {
  return JSON.stringify({
    model: p.model,
    messages: [{ role: 'user', content: p.prompt }],
    max_tokens: p.maxTokens,
    temperature: 0,
    seed: p.seed,
    stream: true,
    stream_options: { include_usage: true },
  })
}

/** One streaming chat completion; times are taken in this process as chunks arrive. */
export function streamChat(ep: Endpoint, p: ChatParams): Promise<StreamTiming> {
  const body = chatBody(p)
  const url = new URL('/v1/chat/completions', ep.url)
  return new Promise((res, rej) => {
    let first = -1
    let done = -1
    let text = ''
    let buf = ''
    let finishReason = ''
    let usage: { prompt_tokens: number; completion_tokens: number } | undefined
    const req = http.request(
      url,
      {
        method: 'POST',
        agent,
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
          authorization: `Bearer ${ep.apiKey}`,
        },
      },
      (resp) => {
        if (resp.statusCode !== 200) {
          let e = ''
          resp.setEncoding('utf8').on('data', (d: string) => {
            e += d
          })
          resp.on('end', () => rej(new Error(`HTTP ${resp.statusCode}: ${e}`)))
          return
        }
        resp.setEncoding('utf8')
        resp.on('data', (d: string) => {
          const now = performance.now()
          const events = takeSseData(buf + d)
          buf = events.rest
          for (const data of events.data) {
            const chunk = JSON.parse(data) as {
              choices: Array<{ delta: { content?: string }; finish_reason: string | null }>
              usage?: { prompt_tokens: number; completion_tokens: number } | null
              error?: { message: string }
            }
            if (chunk.error) return rej(new Error(`stream error: ${chunk.error.message}`))
            const choice = chunk.choices[0]
            const content = choice?.delta.content ?? ''
            if (content.length > 0) {
              if (first < 0) first = now - start
              text += content
            }
            if (choice?.finish_reason) {
              finishReason = choice.finish_reason
              done = now - start
            }
            if (chunk.usage) usage = chunk.usage
          }
        })
        resp.on('end', () => {
          if (done < 0 || usage == null) return rej(new Error('stream ended without finish_reason/usage'))
          res({
            ttftMs: first < 0 ? done : first,
            doneMs: done,
            completionTokens: usage.completion_tokens,
            promptTokens: usage.prompt_tokens,
            finishReason,
            text,
          })
        })
      },
    )
    req.on('error', rej)
    const start = performance.now()
    req.end(body)
  })
}

// ---------------------------------------------------------------------------------------------
// The direct baseline: LlamaEngine + Scheduler in a child process of its own, driven over IPC.

export interface DirectEngine {
  child: Child
  run(p: ChatParams, concurrency?: number): Promise<DirectRunResult[]>
}

export async function startDirect(opts: { model: string; threads: number; slots: number }): Promise<DirectEngine> {
  const child = spawnNode('direct', ['bin/run-ts.js', 'bench/direct-child.ts', JSON.stringify(opts)], { ipc: true })
  let next = 0
  const pending = new Map<number, { res: (r: DirectRunResult[]) => void; rej: (e: Error) => void }>()
  const ready = new Promise<void>((res, rej) => {
    child.proc.on('message', (msg: DirectReply) => {
      if (msg.type === 'ready') return res()
      const p = pending.get(msg.id)
      if (p == null) return
      pending.delete(msg.id)
      if (msg.type === 'result') p.res(msg.results)
      else p.rej(new Error(`direct: ${msg.message}`))
    })
    child.proc.once('exit', (code) => {
      const e = new Error(`direct child exited (${code})`)
      rej(e)
      for (const p of pending.values()) p.rej(e)
      pending.clear()
    })
  })
  await ready
  return {
    child,
    run: (p, concurrency = 1) =>
      new Promise((res, rej) => {
        const id = next++
        pending.set(id, { res, rej })
        const msg: DirectRequest = {
          type: 'run',
          id,
          prompt: p.prompt,
          maxTokens: p.maxTokens,
          seed: p.seed,
          concurrency,
        }
        child.proc.send(msg)
      }),
  }
}

// ---------------------------------------------------------------------------------------------
// Statistics and printing

export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return Number.NaN
  const s = [...values].sort((a, b) => a - b)
  const pos = (s.length - 1) * q
  const lo = Math.floor(pos)
  const hi = Math.ceil(pos)
  return (s[lo] as number) + ((s[hi] as number) - (s[lo] as number)) * (pos - lo)
}

export const median = (v: readonly number[]): number => quantile(v, 0.5)
export const mean = (v: readonly number[]): number => v.reduce((a, b) => a + b, 0) / v.length

export function fmt(n: number, digits = 2): string {
  if (!Number.isFinite(n)) return String(n)
  return n.toFixed(digits)
}

/** Prints rows as an aligned text table. */
export function table(headers: string[], rows: Array<Array<string | number>>): void {
  const cells = [headers, ...rows.map((r) => r.map(String))]
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)))
  const line = (r: string[]): string =>
    r.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ')
  console.log(line(headers))
  console.log(widths.map((w) => '-'.repeat(w)).join('  '))
  for (const r of cells.slice(1)) console.log(line(r))
}

/** The final figure line, e.g. `mesh.tps_ratio = 0.99 (goal ≥ 0.97)`. */
export function figure(name: string, value: number, digits: number, goal?: { op: '≤' | '≥'; value: number }): void {
  const met =
    goal == null ? '' : (goal.op === '≤' ? value <= goal.value : value >= goal.value) ? ' — met' : ' — NOT met'
  console.log(`${name} = ${fmt(value, digits)}${goal ? ` (goal ${goal.op} ${goal.value})${met}` : ''}`)
}

/** Load average, to show how busy the shared machine was during a bench. */
export function loadavg(): string {
  try {
    return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')
  } catch {
    return 'n/a'
  }
}

/** The `data:` payloads of the complete SSE events in `buf` (without [DONE]), and what is left over. */
export function takeSseData(buf: string): { data: string[]; rest: string } {
  const data: string[] = []
  let rest = buf
  let i = rest.indexOf('\n\n')
  while (i >= 0) {
    const event = rest.slice(0, i)
    rest = rest.slice(i + 2)
    i = rest.indexOf('\n\n')
    for (const line of event.split('\n')) {
      if (!line.startsWith('data:')) continue
      const payload = line.slice(5).trim()
      if (payload !== '[DONE]') data.push(payload)
    }
  }
  return { data, rest }
}
