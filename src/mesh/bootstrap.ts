// Staying joined: a peer redials its bootstrap peers while it is not connected to them. A bootstrap
// given as another peer's peer.json is re-read at every redial, so a peer that restarted elsewhere
// (a new port under the same peer id) is found again; a known peer id is also looked up in the DHT.
import { readFile } from 'node:fs/promises'
import { KEEP_ALIVE, type Libp2p } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'

/** A bootstrap entry that is a multiaddr (anything else is the path of a peer.json). */
export const isMultiaddrText = (text: string): boolean => /^\/(ip4|ip6|dns|dns4|dns6)\//.test(text)

export class PeerJsonError extends Error {
  override name = 'PeerJsonError'
}

/** The multiaddrs a peer.json (`{peerId, multiaddrs}`, as `cluster gateway|node` write it) lists. */
export function parsePeerJson(text: string): string[] {
  return readPeerJson(text).multiaddrs
}

/** The peer ids a peer.json names: its peerId and the /p2p/ ids of its multiaddrs. */
export function peerJsonIds(text: string): string[] {
  const { peerId, multiaddrs } = readPeerJson(text)
  const ids = peerId != null ? [peerId] : []
  for (const m of multiaddrs) {
    const id = peerIdOfText(m)
    if (id != null) ids.push(id)
  }
  return ids
}

function readPeerJson(text: string): { peerId: string | undefined; multiaddrs: string[] } {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw new PeerJsonError((err as Error).message.replace(/\s+/g, ' '))
  }
  const { peerId, multiaddrs } = (json ?? {}) as { peerId?: unknown; multiaddrs?: unknown }
  if (!Array.isArray(multiaddrs) || !multiaddrs.every((m) => typeof m === 'string')) {
    throw new PeerJsonError('no "multiaddrs" list')
  }
  return { peerId: typeof peerId === 'string' && peerId !== '' ? peerId : undefined, multiaddrs }
}

/**
 * Reads peer.json files afresh at each call: what `parse` makes of each, in order. A file that
 * cannot be read or parsed now (its peer is rewriting it, or restarting) counts with what it gave
 * when last read.
 */
export function peerJsonReader<T>(files: readonly string[], parse: (text: string) => T[]): () => Promise<T[]> {
  const lastRead = new Map<string, T[]>()
  return async () => {
    const out: T[] = []
    for (const file of files) {
      try {
        lastRead.set(file, parse(await readFile(file, 'utf8')))
      } catch {
        // Being rewritten, or gone while its peer restarts: what it said last still stands.
      }
      out.push(...(lastRead.get(file) ?? []))
    }
    return out
  }
}

/** Where the operator hears about bootstrap outages (a pino logger fits). */
export interface BootstrapLog {
  warn(message: string): void
  info(message: string): void
}

export interface BootstrapOptions {
  redialMs: number
  /** An outage (no bootstrap peer connected) this long is logged, once. */
  warnAfterMs: number
  log: () => BootstrapLog
}

/** One peer to stay connected to: its id when known, and the addresses to dial it at. */
interface Target {
  id: string | undefined
  addrs: Multiaddr[]
}

/** The peer id an address leads to (the last /p2p/: a relayed address names its relay first). */
const peerIdOf = (ma: Multiaddr): string | undefined => ma.getComponents().findLast((c) => c.name === 'p2p')?.value

/** peerIdOf for an address as text; undefined when it is not a multiaddr. */
export function peerIdOfText(text: string): string | undefined {
  try {
    return peerIdOf(multiaddr(text))
  } catch {
    return undefined
  }
}

/**
 * Dials each bootstrap peer now and again whenever it is not connected, until the peer stops.
 * `entries` are multiaddrs or peer.json paths; a file that cannot be read or parsed at a redial (its
 * peer is restarting) leaves the addresses it listed last.
 */
export function keepBootstrapped(peer: Libp2p, entries: string[], o: BootstrapOptions): void {
  if (entries.length === 0) return
  const self = peer.peerId.toString()
  const fixed = entries.filter(isMultiaddrText).flatMap((a) => parse([a]))
  const readFiles = peerJsonReader(
    entries.filter((e) => !isMultiaddrText(e)),
    (text) => parse(parsePeerJson(text)),
  )
  /** Since when no bootstrap peer is connected (undefined: one is), and whether that was said. */
  let outageSince: number | undefined = Date.now()
  let warned = false
  let timer: NodeJS.Timeout | undefined

  const connectedTo = (t: Target): boolean =>
    peer
      .getConnections()
      .some((c) => (t.id != null ? c.remotePeer.toString() === t.id : t.addrs.some((a) => a.equals(c.remoteAddr))))

  /** Dials and keeps the connection (a bootstrap peer is not pruned when the peer has many). */
  const dialAndKeep = async (addrs: Multiaddr | Multiaddr[], signal: AbortSignal): Promise<true> => {
    const conn = await peer.dial(addrs, { signal })
    await peer.peerStore.merge(conn.remotePeer, { tags: { [KEEP_ALIVE]: { value: 1 } } })
    return true
  }

  const reach = async (t: Target): Promise<boolean> => {
    if (connectedTo(t)) return true
    const signal = AbortSignal.timeout(Math.max(o.redialMs, 1000))
    try {
      // All addresses of one peer in one dial: libp2p picks among them, one connection.
      return await dialAndKeep(t.id != null ? t.addrs : (t.addrs[0] as Multiaddr), signal)
    } catch {
      // Unreachable where it was: below, or at the next redial.
    }
    if (t.id == null || peer.getConnections().length === 0) return false
    // A peer that moved may be known to the peers we still have (our DHT): ask them where it is now.
    try {
      const id = peerIdFromString(t.id)
      const found = await peer.peerRouting.findPeer(id, { signal, useCache: false })
      const addrs = found.multiaddrs.map((a) => (peerIdOf(a) == null ? a.encapsulate(`/p2p/${t.id}`) : a))
      if (addrs.length === 0 || signal.aborted) return false
      return await dialAndKeep(addrs, signal)
    } catch {
      return false
    }
  }

  const tick = async (): Promise<void> => {
    const targets = group([...fixed, ...(await readFiles())]).filter((t) => t.id !== self)
    if (targets.length === 0) return
    const reached = await Promise.all(targets.map(reach))
    const now = Date.now()
    if (reached.some(Boolean)) {
      if (warned && outageSince != null) {
        o.log().info(`bootstrap peer reachable again after ${Math.round((now - outageSince) / 1000)} s`)
      }
      outageSince = undefined
      warned = false
      return
    }
    outageSince ??= now
    if (!warned && now - outageSince >= o.warnAfterMs) {
      warned = true
      const tried = targets.flatMap((t) => t.addrs.map(String)).join(', ')
      o.log().warn(
        `no bootstrap peer reachable for ${Math.round((now - outageSince) / 1000)} s (tried ${tried}); still redialling every ${o.redialMs} ms`,
      )
    }
  }
  const loop = (): void => {
    if (peer.status !== 'started') return
    void tick()
      .catch(() => undefined)
      .finally(() => {
        if (peer.status === 'started') timer = setTimeout(loop, o.redialMs)
      })
  }
  peer.addEventListener('start', loop, { once: true })
  peer.addEventListener('stop', () => clearTimeout(timer), { once: true })
  if (peer.status === 'started') loop()
}

function parse(list: string[]): Multiaddr[] {
  return list.flatMap((a) => {
    try {
      return [multiaddr(a)]
    } catch {
      return []
    }
  })
}

/** Addresses by peer id (an address without one is a target of its own), in first-seen order. */
function group(addrs: Multiaddr[]): Target[] {
  const byId = new Map<string, Target>()
  const out: Target[] = []
  for (const a of addrs) {
    const id = peerIdOf(a)
    if (id == null) {
      out.push({ id, addrs: [a] })
      continue
    }
    const t = byId.get(id)
    if (t != null) {
      if (!t.addrs.some((x) => x.equals(a))) t.addrs.push(a)
      continue
    }
    const fresh: Target = { id, addrs: [a] }
    byId.set(id, fresh)
    out.push(fresh)
  }
  return out
}
