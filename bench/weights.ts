// weights: how fast a node gets a model's weights from the mesh. A provider adds a file of random
// bytes (1 GiB by default; the add is not timed); a fetcher reads it with ContentStore.cat and
// writes it to a file, as a node does, against the same bytes sent as they are over one raw libp2p
// stream between the same two peers (the provider reads its file, the fetcher writes a file).
// Each peer is a process of its own, as real nodes are. Rounds alternate the two paths; between
// rounds the fetcher forgets every block. Then a second provider holding the same blocks joins.
import { randomFillSync } from 'node:crypto'
import { once } from 'node:events'
import { createWriteStream } from 'node:fs'
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import { type Child, figure, fmt, foreignLoad, loadavg, median, spawnNode, table, waitQuiet, withScope } from './lib.ts'
import type { WeightsChildInit, WeightsReply, WeightsRequest } from './weights-child.ts'

const MIB = 1024 * 1024

interface WeightsPeer {
  child: Child
  multiaddr: string
  call(req: DistributiveOmit<WeightsRequest, 'id'>): Promise<{ ms: number; bytes: number; cid?: string }>
}

type DistributiveOmit<T, K extends keyof T> = T extends unknown ? Omit<T, K> : never

async function startPeer(name: string, init: WeightsChildInit): Promise<WeightsPeer> {
  const child = spawnNode(name, ['bin/run-ts.js', 'bench/weights-child.ts', JSON.stringify(init)], { ipc: true })
  let next = 0
  const pending = new Map<
    number,
    { res: (r: { ms: number; bytes: number; cid?: string }) => void; rej: (e: Error) => void }
  >()
  const ready = new Promise<string>((res, rej) => {
    child.proc.on('message', (msg: WeightsReply) => {
      if (msg.type === 'ready') return res(msg.multiaddrs[0] as string)
      const p = pending.get(msg.id)
      if (p == null) return
      pending.delete(msg.id)
      if (msg.type === 'done') p.res(msg)
      else p.rej(new Error(`${name}: ${msg.message}`))
    })
    child.proc.once('exit', (code) => {
      const e = new Error(`${name} exited (${code})`)
      rej(e)
      for (const p of pending.values()) p.rej(e)
      pending.clear()
    })
  })
  const multiaddr = await ready
  return {
    child,
    multiaddr,
    call: (req) =>
      new Promise((res, rej) => {
        const id = next++
        pending.set(id, { res, rej })
        child.proc.send({ ...req, id })
      }),
  }
}

/** A file of random bytes, written in 4 MiB pieces. */
async function randomFile(path: string, bytes: number): Promise<void> {
  const out = createWriteStream(path)
  const buf = Buffer.alloc(4 * MIB)
  for (let done = 0; done < bytes; done += buf.length) {
    const piece = buf.subarray(0, Math.min(buf.length, bytes - done))
    randomFillSync(piece)
    if (!out.write(Buffer.from(piece))) await once(out, 'drain')
  }
  out.end()
  await once(out, 'finish')
}

interface Sample {
  mibps: number
  /** Cores other processes kept busy meanwhile. */
  others: number
}

export async function weightsBench(): Promise<void> {
  const mib = Number(process.env.BENCH_WEIGHTS_MIB ?? 1024)
  const rounds = Number(process.env.BENCH_WEIGHTS_ROUNDS ?? 2)
  const multi = process.env.BENCH_WEIGHTS_MULTI !== '0'
  // Knob exploration: ContentStore options for every peer, e.g. '{"bitswap":{"maxOutgoingMessageSize":8388608}}'.
  const storeOpts = JSON.parse(process.env.BENCH_WEIGHTS_STORE ?? '{}') as NonNullable<WeightsChildInit['store']>
  await withScope('weights', async (dir) => {
    const file = join(dir, 'weights.bin')
    await randomFile(file, mib * MIB)
    const a = await startPeer('provider-a', { dataDir: join(dir, 'a'), store: storeOpts })
    const addA = await a.call({ type: 'add', path: file })
    const cid = addA.cid as string
    console.log(
      `\nweights: ${mib} MiB of random bytes, root ${cid}; add on provider A took ${fmt(addA.ms / 1000, 1)} s`,
    )
    console.log(`  store options: ${JSON.stringify(storeOpts)}`)
    const out = join(dir, 'fetched.bin')
    const providers = [a]
    let fetchers = 0

    // A fresh fetcher (new process, new peer id, empty blockstore) for every sample: a provider's
    // bitswap does not send a block again to a peer that had it a few seconds ago.
    const sample = async (
      run: (fetcher: WeightsPeer) => Promise<{ ms: number; bytes: number }>,
      connectTo: WeightsPeer[],
      fetcherStore: WeightsChildInit['store'] & object,
    ): Promise<Sample> => {
      const fetcher = await startPeer('fetcher', { dataDir: join(dir, `f${fetchers++}`), store: fetcherStore })
      try {
        for (const p of connectTo) await fetcher.call({ type: 'dial', to: p.multiaddr })
        const pids = [fetcher.child.pid, ...providers.map((p) => p.child.pid)]
        await waitQuiet(pids)
        const others = foreignLoad(pids)
        const r = await run(fetcher)
        if (r.bytes !== mib * MIB) throw new Error(`fetched ${r.bytes} bytes, expected ${mib * MIB}`)
        return { mibps: r.bytes / MIB / (r.ms / 1000), others: others() }
      } finally {
        await fetcher.child.stop()
        await rm(join(dir, `f${fetchers - 1}`), { recursive: true, force: true })
        await rm(out, { force: true })
      }
    }
    type Path = { name: string; run: () => Promise<Sample> }
    const raw: Path = {
      name: 'raw libp2p stream (from A)',
      run: () => sample((f) => f.call({ type: 'fetch-raw', from: a.multiaddr, out }), [a], storeOpts),
    }
    const cat = (name: string, from: WeightsPeer[], fetcherStore: WeightsChildInit['store'] & object): Path => ({
      name,
      run: () =>
        sample(
          (f) => f.call({ type: 'fetch-helia', cid, out, providers: from.map((p) => p.multiaddr) }),
          from,
          fetcherStore,
        ),
    })
    const bitswapOnly = { ...storeOpts, blockStream: false as const }

    /** Rounds over `paths` (rotating which goes first); returns each path's median MiB/s. */
    const rounds_ = async (label: string, paths: Path[]): Promise<number[]> => {
      const s = paths.map(() => [] as Sample[])
      for (let i = 0; i < rounds; i++) {
        for (let j = 0; j < paths.length; j++) {
          const k = (i + j) % paths.length
          s[k]?.push(await (paths[k] as Path).run())
        }
      }
      console.log(`\n${label}, ${rounds} rounds (load avg ${loadavg()})`)
      table(
        ['path', 'MiB/s per round', 'median MiB/s', 'others (cores)'],
        paths.map((p, k) => {
          const xs = s[k] ?? []
          return [
            p.name,
            xs.map((x) => fmt(x.mibps, 0)).join(' / '),
            fmt(median(xs.map((x) => x.mibps)), 1),
            xs.map((x) => fmt(x.others, 2)).join(' / '),
          ]
        }),
      )
      return s.map((xs) => median(xs.map((x) => x.mibps)))
    }

    const withBitswapRow = process.env.BENCH_WEIGHTS_BITSWAP !== '0'
    const [r1 = Number.NaN, c1 = Number.NaN, b1] = await rounds_('one provider (A)', [
      raw,
      cat('ContentStore.cat → file', [a], storeOpts),
      ...(withBitswapRow ? [cat('  same, bitswap only', [a], bitswapOnly)] : []),
    ])
    figure('weights.ratio_1_provider', c1 / r1, 2, { op: '≥', value: 0.5 })
    if (b1 != null) figure('weights.ratio_1_provider_bitswap_only', b1 / r1, 2)
    if (multi) {
      const b = await startPeer('provider-b', { dataDir: join(dir, 'b'), store: storeOpts })
      providers.push(b)
      const addB = await b.call({ type: 'add', path: file })
      if (addB.cid !== cid) throw new Error(`provider B got ${addB.cid}, A ${cid}`)
      const [r2 = Number.NaN, c2 = Number.NaN, b2] = await rounds_('two providers (A and B)', [
        raw,
        cat('ContentStore.cat → file', [a, b], storeOpts),
        ...(withBitswapRow ? [cat('  same, bitswap only', [a, b], bitswapOnly)] : []),
      ])
      figure('weights.ratio_2_providers', c2 / r2, 2)
      if (b2 != null) figure('weights.ratio_2_providers_bitswap_only', b2 / r2, 2)
    }
  })
}
