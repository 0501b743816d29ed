// The Directory decides which nodes the gateway may route to, so its lease and incarnation rules are
// what prevent routing to ghosts (expired or restarted runs) and double-counting a node. Driven here
// by direct calls and an injected clock, so every boundary is exact and nothing depends on timing.
import { afterEach, describe, expect, it, vi } from 'vitest'
import type { Capabilities, Heartbeat } from '../../protocols/index.ts'
import { LEASE_INTERVALS } from '../../src/mesh/constants.ts'
import { Directory, type DirectoryOptions, MAX_SEEN_MODELS, type NodeEntry } from '../../src/mesh/directory.ts'

const A = '12D3KooWAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
const B = '12D3KooWBbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb'

function hb(over: Partial<Heartbeat> = {}): Heartbeat {
  return {
    v: 1,
    peerId: A,
    incarnation: 1,
    seq: 0,
    sentAt: 0,
    intervalMs: 1000,
    state: 'serving',
    load: { active: 0, queued: 0, slots: 2, maxQueue: 8 },
    capabilitiesVersion: 0,
    models: ['tiny'],
    ...over,
  }
}

function caps(over: Partial<Capabilities> = {}): Capabilities {
  return {
    v: 1,
    peerId: A,
    incarnation: 1,
    version: 1,
    models: [{ id: 'tiny', contextSize: 512, state: 'ready', tasks: ['chat'] }],
    hardware: { cpu: { model: 'test', cores: 2 }, ramBytes: 1024, gpus: [] },
    prices: [],
    payoutAddress: '',
    software: { name: 'cluster', version: 'test' },
    ...over,
  }
}

interface Recorded {
  joined: NodeEntry[]
  heartbeats: NodeEntry[]
  left: Array<{ peerId: string; incarnation: number; reason: string }>
  capabilities: NodeEntry[]
}

let directories: Directory[] = []

afterEach(() => {
  for (const d of directories) d.stop()
  directories = []
})

function setup(options: Omit<DirectoryOptions, 'now'> = {}): { dir: Directory; clock: { t: number }; ev: Recorded } {
  const clock = { t: 1_000_000 }
  const dir = new Directory({ ...options, now: () => clock.t })
  directories.push(dir)
  const ev: Recorded = { joined: [], heartbeats: [], left: [], capabilities: [] }
  dir.on('node:joined', (e) => ev.joined.push(e))
  dir.on('node:heartbeat', (e) => ev.heartbeats.push(e))
  dir.on('node:left', (e) => ev.left.push(e))
  dir.on('node:capabilities', (e) => ev.capabilities.push(e))
  return { dir, clock, ev }
}

describe('Directory membership', () => {
  it('a first heartbeat joins the node once and reports the heartbeat', () => {
    const { dir, clock, ev } = setup()
    dir.handleHeartbeat(hb())
    expect(ev.joined.map((e) => e.peerId)).toEqual([A])
    expect(ev.heartbeats).toHaveLength(1)
    const entry = dir.get(A)
    expect(entry).toMatchObject({ peerId: A, incarnation: 1, joinedAt: clock.t, lastSeen: clock.t })
    expect(entry?.expiresAt).toBe(clock.t + 1000 * LEASE_INTERVALS)

    clock.t += 500
    dir.handleHeartbeat(hb({ seq: 1 }))
    // A renewal is a heartbeat, not another join.
    expect(ev.joined).toHaveLength(1)
    expect(ev.heartbeats).toHaveLength(2)
    expect(dir.nodes()).toHaveLength(1)
  })

  it('each heartbeat renews the lease from its own arrival time', () => {
    const { dir, clock, ev } = setup({ leaseIntervals: 3 })
    const start = clock.t
    dir.handleHeartbeat(hb({ seq: 0 }))
    // Beats every 2.5 s outlive the 3 s lease of the first beat many times over.
    for (let seq = 1; seq <= 4; seq++) {
      clock.t += 2500
      dir.sweep()
      expect(ev.left, `before beat ${seq}`).toEqual([])
      dir.handleHeartbeat(hb({ seq }))
    }
    const entry = dir.get(A)!
    expect(entry.joinedAt).toBe(start)
    expect(entry.lastSeen).toBe(clock.t)
    expect(entry.expiresAt).toBe(clock.t + 3000)
    expect(entry.heartbeat.seq).toBe(4)
  })

  it('expires a silent node exactly leaseIntervals × intervalMs after its last beat, not before', () => {
    const { dir, clock, ev } = setup({ leaseIntervals: 4 })
    dir.handleHeartbeat(hb({ intervalMs: 250 }))
    const last = clock.t
    clock.t = last + 4 * 250 - 1
    dir.sweep()
    expect(dir.get(A)).toBeDefined()
    expect(ev.left).toEqual([])

    clock.t = last + 4 * 250
    dir.sweep()
    expect(dir.get(A)).toBeUndefined()
    expect(dir.nodes()).toEqual([])
    expect(ev.left).toEqual([{ peerId: A, incarnation: 1, reason: 'expired' }])

    dir.sweep()
    expect(ev.left).toHaveLength(1)
  })

  it('uses the interval each heartbeat announces for the lease', () => {
    const { dir, clock } = setup({ leaseIntervals: 2 })
    dir.handleHeartbeat(hb({ intervalMs: 1000 }))
    dir.handleHeartbeat(hb({ peerId: B, intervalMs: 100 }))
    clock.t += 200
    dir.sweep()
    expect(dir.nodes().map((n) => n.peerId)).toEqual([A])
  })

  it('sweep(now) with an explicit time only drops the expired entries', () => {
    const { dir, clock, ev } = setup({ leaseIntervals: 1 })
    dir.handleHeartbeat(hb({ intervalMs: 100 }))
    dir.handleHeartbeat(hb({ peerId: B, intervalMs: 300 }))
    dir.sweep(clock.t + 200)
    expect(ev.left.map((l) => l.peerId)).toEqual([A])
    expect(dir.nodes().map((n) => n.peerId)).toEqual([B])
  })

  it('a restart with a higher incarnation replaces the entry: left(restarted), then joined', () => {
    const { dir, clock, ev } = setup()
    const order: string[] = []
    dir.on('node:left', (l) => order.push(`left:${l.incarnation}:${l.reason}:${dir.nodes().length}`))
    dir.on('node:joined', (e) => order.push(`joined:${e.incarnation}:${dir.nodes().length}`))

    dir.handleHeartbeat(hb({ incarnation: 1, seq: 40 }))
    clock.t += 100
    // The new run counts seq from 0 again: a lower seq must not hide a newer incarnation.
    dir.handleHeartbeat(hb({ incarnation: 2, seq: 0, models: ['other'] }))

    expect(order).toEqual(['joined:1:1', 'left:1:restarted:0', 'joined:2:1'])
    expect(dir.nodes()).toHaveLength(1)
    const entry = dir.get(A)!
    expect(entry.incarnation).toBe(2)
    expect(entry.joinedAt).toBe(clock.t)
    expect(dir.nodesServing('tiny')).toEqual([])
    expect(dir.nodesServing('other').map((n) => n.incarnation)).toEqual([2])
    expect(ev.joined).toHaveLength(2)
  })

  it('ignores a late heartbeat of an older incarnation', () => {
    const { dir, clock, ev } = setup()
    dir.handleHeartbeat(hb({ incarnation: 5, seq: 1 }))
    const before = { ...dir.get(A)! }
    clock.t += 100
    dir.handleHeartbeat(hb({ incarnation: 4, seq: 99, models: ['stale'] }))
    expect(dir.get(A)).toMatchObject({ incarnation: 5, lastSeen: before.lastSeen, expiresAt: before.expiresAt })
    expect(dir.nodesServing('stale')).toEqual([])
    expect(ev.left).toEqual([])
    expect(ev.heartbeats).toHaveLength(1)
  })

  it('ignores an older seq of the same incarnation (does not renew or roll back models)', () => {
    const { dir, clock, ev } = setup()
    dir.handleHeartbeat(hb({ seq: 10, models: ['new'] }))
    const expires = dir.get(A)!.expiresAt
    clock.t += 100
    dir.handleHeartbeat(hb({ seq: 9, models: ['old'] }))
    expect(dir.get(A)!.heartbeat.seq).toBe(10)
    expect(dir.get(A)!.expiresAt).toBe(expires)
    expect(dir.nodesServing('old')).toEqual([])
    expect(ev.heartbeats).toHaveLength(1)
  })

  it("a 'leaving' heartbeat removes the node at once", () => {
    const { dir, clock, ev } = setup()
    dir.handleHeartbeat(hb({ seq: 3 }))
    clock.t += 1
    dir.handleHeartbeat(hb({ seq: 4, state: 'leaving', models: [] }))
    expect(dir.get(A)).toBeUndefined()
    expect(ev.left).toEqual([{ peerId: A, incarnation: 1, reason: 'leaving' }])
    // Leaving does not count as a heartbeat of a live node.
    expect(ev.heartbeats).toHaveLength(1)
  })

  it("a 'leaving' heartbeat of an older incarnation or an older seq does not remove the current run", () => {
    const { dir, ev } = setup()
    dir.handleHeartbeat(hb({ incarnation: 2, seq: 5 }))
    dir.handleHeartbeat(hb({ incarnation: 1, seq: 50, state: 'leaving' }))
    dir.handleHeartbeat(hb({ incarnation: 2, seq: 4, state: 'leaving' }))
    expect(dir.get(A)?.incarnation).toBe(2)
    expect(ev.left).toEqual([])
  })

  it("a 'leaving' heartbeat of a newer incarnation ends the older run's entry at once", () => {
    const { dir, ev } = setup()
    dir.handleHeartbeat(hb({ incarnation: 1, seq: 9 }))
    // The node restarted and stopped again before its first serving beat reached us.
    dir.handleHeartbeat(hb({ incarnation: 2, seq: 0, state: 'leaving', models: [] }))
    expect(dir.get(A)).toBeUndefined()
    expect(ev.left).toEqual([{ peerId: A, incarnation: 1, reason: 'leaving' }])
  })

  it("a 'leaving' heartbeat of an unknown node is a no-op", () => {
    const { dir, ev } = setup()
    dir.handleHeartbeat(hb({ state: 'leaving' }))
    expect(dir.nodes()).toEqual([])
    expect(ev.joined).toEqual([])
    expect(ev.left).toEqual([])
  })
})

describe('Directory model queries', () => {
  it('nodesServing, models and knowsModel follow the latest heartbeats', () => {
    const { dir, clock } = setup({ leaseIntervals: 1 })
    dir.handleHeartbeat(hb({ peerId: A, models: ['tiny', 'big'], intervalMs: 100 }))
    dir.handleHeartbeat(hb({ peerId: B, models: ['tiny'], intervalMs: 1000 }))

    expect(
      dir
        .nodesServing('tiny')
        .map((n) => n.peerId)
        .sort(),
    ).toEqual([A, B].sort())
    expect(dir.nodesServing('big').map((n) => n.peerId)).toEqual([A])
    expect(dir.nodesServing('nope')).toEqual([])
    const models = dir.models()
    expect([...models.keys()].sort()).toEqual(['big', 'tiny'])
    expect(models.get('tiny')).toHaveLength(2)

    // A stops serving 'big' and then expires; 'big' is no longer served but stays known.
    dir.handleHeartbeat(hb({ peerId: A, seq: 1, models: ['tiny'], intervalMs: 100 }))
    expect(dir.nodesServing('big')).toEqual([])
    clock.t += 100
    dir.sweep()
    expect(dir.nodesServing('tiny').map((n) => n.peerId)).toEqual([B])
    expect(dir.models().has('big')).toBe(false)
    expect(dir.knowsModel('big')).toBe(true)
    expect(dir.knowsModel('tiny')).toBe(true)
    expect(dir.knowsModel('never-served')).toBe(false)
  })

  it('knowsModel also learns from capabilities records', () => {
    const { dir } = setup()
    dir.handleHeartbeat(hb({ models: [] }))
    expect(dir.knowsModel('loading-model')).toBe(false)
    dir.handleCapabilities(
      caps({ models: [{ id: 'loading-model', contextSize: 1, state: 'loading', tasks: ['chat'] }] }),
    )
    expect(dir.knowsModel('loading-model')).toBe(true)
    // Known, but not served: routing uses the heartbeat's ready list only.
    expect(dir.nodesServing('loading-model')).toEqual([])
  })
})

describe('Directory capabilities', () => {
  it('attaches capabilities only to the matching incarnation of a known node', () => {
    const { dir, ev } = setup()
    dir.handleCapabilities(caps({ peerId: B })) // unknown node
    dir.handleHeartbeat(hb({ incarnation: 2 }))
    dir.handleCapabilities(caps({ incarnation: 1, version: 9 })) // older run
    dir.handleCapabilities(caps({ incarnation: 3, version: 9 })) // a run we have not seen beat
    expect(dir.get(A)?.capabilities).toBeUndefined()
    expect(ev.capabilities).toEqual([])

    dir.handleCapabilities(caps({ incarnation: 2, version: 1 }))
    expect(dir.get(A)?.capabilities?.version).toBe(1)
    expect(ev.capabilities).toHaveLength(1)
  })

  it('keeps only newer capabilities versions', () => {
    const { dir } = setup()
    // The event carries the live entry: record the version as it was when emitted.
    const emitted: Array<number | undefined> = []
    dir.on('node:capabilities', (e) => emitted.push(e.capabilities?.version))
    dir.handleHeartbeat(hb())
    dir.handleCapabilities(caps({ version: 3, payoutAddress: '' }))
    dir.handleCapabilities(caps({ version: 3, payoutAddress: `0x${'11'.repeat(20)}` }))
    dir.handleCapabilities(caps({ version: 2, payoutAddress: `0x${'22'.repeat(20)}` }))
    expect(dir.get(A)?.capabilities).toMatchObject({ version: 3, payoutAddress: '' })
    dir.handleCapabilities(caps({ version: 4, payoutAddress: `0x${'44'.repeat(20)}` }))
    expect(dir.get(A)?.capabilities).toMatchObject({ version: 4, payoutAddress: `0x${'44'.repeat(20)}` })
    expect(emitted).toEqual([3, 4])
  })

  it('capabilities do not survive a restart: the new run starts without any', () => {
    const { dir } = setup()
    dir.handleHeartbeat(hb({ incarnation: 1 }))
    dir.handleCapabilities(caps({ incarnation: 1, version: 5 }))
    dir.handleHeartbeat(hb({ incarnation: 2 }))
    expect(dir.get(A)?.capabilities).toBeUndefined()
  })
})

describe('Directory capabilities fetching', () => {
  /** A fetchCapabilities whose answers the test releases by hand. */
  function manualFetch(): {
    fetch: (peerId: string) => Promise<Capabilities>
    calls: string[]
    pending: Array<{ resolve: (c: Capabilities) => void; reject: (e: Error) => void }>
  } {
    const calls: string[] = []
    const pending: Array<{ resolve: (c: Capabilities) => void; reject: (e: Error) => void }> = []
    return {
      calls,
      pending,
      fetch: (peerId) => {
        calls.push(peerId)
        return new Promise((resolve, reject) => pending.push({ resolve, reject }))
      },
    }
  }

  const settle = (): Promise<void> => new Promise((r) => setImmediate(r))

  it('fetches when the heartbeat names a newer version than held, once at a time per peer', async () => {
    const f = manualFetch()
    const { dir, ev } = setup({ fetchCapabilities: f.fetch })
    dir.handleHeartbeat(hb({ seq: 0, capabilitiesVersion: 1 }))
    expect(f.calls).toEqual([A])
    // More beats while the fetch is in flight must not start another one for the same peer...
    dir.handleHeartbeat(hb({ seq: 1, capabilitiesVersion: 1 }))
    dir.handleHeartbeat(hb({ seq: 2, capabilitiesVersion: 2 }))
    expect(f.calls).toEqual([A])
    // ...but another peer gets its own.
    dir.handleHeartbeat(hb({ peerId: B, capabilitiesVersion: 0 }))
    expect(f.calls).toEqual([A, B])

    f.pending[0]!.resolve(caps({ version: 1 }))
    await settle()
    expect(dir.get(A)?.capabilities?.version).toBe(1)
    expect(ev.capabilities).toHaveLength(1)

    // Held version 1 equals the heartbeat's: nothing to fetch.
    dir.handleHeartbeat(hb({ seq: 3, capabilitiesVersion: 1 }))
    expect(f.calls).toEqual([A, B])
    // A newer version than held: fetch again now that the first one has finished.
    dir.handleHeartbeat(hb({ seq: 4, capabilitiesVersion: 2 }))
    expect(f.calls).toEqual([A, B, A])
    f.pending[2]!.resolve(caps({ version: 2 }))
    await settle()
    expect(dir.get(A)?.capabilities?.version).toBe(2)
  })

  it('a failed fetch is retried on the next heartbeat', async () => {
    const f = manualFetch()
    const { dir } = setup({ fetchCapabilities: f.fetch })
    dir.handleHeartbeat(hb({ seq: 0, capabilitiesVersion: 1 }))
    f.pending[0]!.reject(new Error('unreachable'))
    await settle()
    expect(dir.get(A)?.capabilities).toBeUndefined()
    dir.handleHeartbeat(hb({ seq: 1, capabilitiesVersion: 1 }))
    expect(f.calls).toEqual([A, A])
  })

  it('ignores a fetched record that names another peer', async () => {
    const f = manualFetch()
    const { dir } = setup({ fetchCapabilities: f.fetch })
    dir.handleHeartbeat(hb({ capabilitiesVersion: 1 }))
    dir.handleHeartbeat(hb({ peerId: B, capabilitiesVersion: 0 }))
    f.pending[0]!.resolve(caps({ peerId: B, version: 1 }))
    await settle()
    expect(dir.get(A)?.capabilities).toBeUndefined()
    expect(dir.get(B)?.capabilities).toBeUndefined()
  })

  it('does not fetch a version that already arrived by gossip', async () => {
    const fetch = vi.fn(async (peerId: string) => caps({ peerId, version: 1 }))
    const { dir } = setup({ fetchCapabilities: fetch })
    dir.handleHeartbeat(hb({ capabilitiesVersion: 1 }))
    await settle()
    expect(fetch).toHaveBeenCalledTimes(1)
    expect(dir.get(A)?.capabilities?.version).toBe(1)

    // Version 3 arrives on the capabilities topic before the heartbeat that announces it.
    dir.handleCapabilities(caps({ version: 3 }))
    dir.handleHeartbeat(hb({ seq: 1, capabilitiesVersion: 3 }))
    dir.handleHeartbeat(hb({ seq: 2, capabilitiesVersion: 2 }))
    await settle()
    expect(fetch).toHaveBeenCalledTimes(1)
    dir.handleHeartbeat(hb({ seq: 3, capabilitiesVersion: 4 }))
    expect(fetch).toHaveBeenCalledTimes(2)
  })
})

describe('models heard of', () => {
  it('a peer naming ever new models cannot grow the memory of them without bound; recent ones stay known', () => {
    const { dir, clock } = setup()
    const names = (i: number) => Array.from({ length: 250 }, (_, k) => `junk-${i}-${k}`)
    const rounds = Math.ceil((MAX_SEEN_MODELS * 2) / 250)
    for (let i = 0; i < rounds; i++) {
      clock.t += 10
      dir.handleHeartbeat(hb({ seq: i, models: ['tiny', ...names(i)] }))
    }
    // The model the node serves all along is still known; the oldest junk is forgotten.
    expect(dir.knowsModel('tiny')).toBe(true)
    expect(dir.knowsModel('junk-0-0')).toBe(false)
    expect(dir.knowsModel(`junk-${rounds - 1}-0`)).toBe(true)
  })
})
